"""The U-Net encoder-decoder and the classic U-Net built from it.

U-Net: Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015. As in most re-implementations (and the LGG study's code, Buda et al.,
"Association of genomic subtypes of lower-grade gliomas with shape features automatically
extracted by a deep learning algorithm", Computers in Biology and Medicine 2019), convolutions are
padded so that the output has the input's size, and each is followed by batch normalisation
(Ioffe & Szegedy, ICML 2015).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from segbench import SegbenchError
from segbench.models.registry import register

Block = Callable[[int, int], nn.Module]  # (in_channels, out_channels) -> module
# channels -> module(skip, decoder) -> the skip to concatenate
Skip = Callable[[int], nn.Module]


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 3,
                dilation: int = 1) -> nn.Sequential:
    """Convolution (no bias: the batch norm after it has one), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    """U-Net's block (Ronneberger et al. 2015): two 3x3 convolution, batch norm, ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(conv_bn_act(in_channels, out_channels),
                         conv_bn_act(out_channels, out_channels))


class PlainSkip(nn.Module):
    """U-Net's own skip connection: the encoder features, unchanged, concatenated by the decoder."""

    def forward(self, skip: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        return skip


class UNet(nn.Module):
    """Encoder-decoder with skip connections (Ronneberger et al. 2015).

    Per level of `features`: a block, then 2x2 max pooling; a bottleneck block with twice the last
    width; per level back up: a 2x2 transposed convolution, the skip (concatenated, or first passed
    through `skip`), a block. A 1x1 convolution makes `classes` logit maps. Inputs must be
    multiples of 2**len(features) (the registry's wrapper pads them).
    """

    def __init__(self, in_channels: int = 3, classes: int = 1,
                 features: Sequence[int] = (64, 128, 256, 512),
                 block: Block = DoubleConv, skip: Skip = lambda channels: PlainSkip()):
        super().__init__()
        features = [int(f) for f in features]
        if not features or min(features) < 1:
            raise SegbenchError("U-Net features must be a non-empty list of positive widths, "
                                f"got {features}")
        self.down = nn.ModuleList()
        channels = int(in_channels)
        for width in features:
            self.down.append(block(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = block(channels, 2 * channels)
        self.up = nn.ModuleList()
        self.skip = nn.ModuleList()
        self.decode = nn.ModuleList()
        for width in reversed(features):
            self.up.append(nn.ConvTranspose2d(2 * width, width, kernel_size=2, stride=2))
            self.skip.append(skip(width))
            self.decode.append(block(2 * width, width))
        self.head = nn.Conv2d(features[0], int(classes), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, skip, block, encoded in zip(self.up, self.skip, self.decode, reversed(skips)):
            x = up(x)
            x = block(torch.cat([skip(encoded, x), x], dim=1))
        return self.head(x)


def _unet_divisor(kwargs: dict) -> int:
    return 2 ** int(kwargs.get("depth", 4))


@register("classic_unet", divisor=_unet_divisor)
def classic_unet(in_channels: int = 3, classes: int = 1, base_width: int = 32,
                 depth: int = 4) -> UNet:
    """The classic U-Net: widths base_width * 2**level for `depth` levels (32 and 4 as in the LGG
    study's code, 7.76M parameters for 3 input channels)."""
    if int(base_width) < 1 or int(depth) < 1:
        raise SegbenchError("classic_unet needs base_width >= 1 and depth >= 1, "
                            f"got {base_width} and {depth}")
    return UNet(in_channels, classes, [int(base_width) * 2**i for i in range(int(depth))])
