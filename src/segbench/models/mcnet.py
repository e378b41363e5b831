"""The CT study's configurable U-Net (the MC-Net family) and the blocks it is built from.

MC-Net ("MC-Net: multi-scale context-attention network for medical CT image segmentation") is a
U-Net (Ronneberger et al., MICCAI 2015) whose convolution blocks extract multi-scale features and
dilated context, and whose skip connections pass through residual attention. The study compares
versions that change one thing at a time:

    v1  DoubleConv blocks, concatenated skips (the plain U-Net: 31,037,633 parameters)
    v2  v1 trained with augmentation: a training setting (mcnet_version=v2), not a model
    v3  split-based convolutions (SPConv) in place of the 3x3 convolutions
    v4  v1 with residual attention on the skips
    v5  ConvModule blocks (CIE, DoubleConv, MFE) with residual attention on the skips

Any block can be combined with any skip (`model.block=mfe model.skip=ra`); `features` sets the
widths. Each block's docstring names the paper it follows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segbench import SegbenchError
from segbench.models.registry import register
from segbench.models.unet import DoubleConv, PlainSkip, UNet, conv_bn_act


class SPConv(nn.Module):
    """Split-based 3x3 convolution: Zhang et al., "Split to Be Slim: An Overlooked Redundancy in
    Vanilla Convolution", IJCAI 2020.

    The input channels are split by `ratio`: the representative part goes through a group-wise 3x3
    plus a point-wise convolution, the rest (taken as redundant) through a cheap 1x1 convolution;
    the two results are fused with per-channel weights from a softmax over their global means
    (parameter-free, as in the paper).
    """

    def __init__(self, in_channels: int, out_channels: int, ratio: float = 0.5, groups: int = 2):
        super().__init__()
        self.split = int(in_channels * ratio)
        if not can_split(in_channels, out_channels, ratio, groups):
            raise SegbenchError(f"SPConv cannot split {in_channels} -> {out_channels} channels "
                                f"with ratio {ratio} into {groups} groups")
        self.group_wise = nn.Conv2d(self.split, out_channels, 3, padding=1, groups=groups,
                                    bias=False)
        self.point_wise = nn.Conv2d(self.split, out_channels, 1, bias=False)
        self.cheap = nn.Conv2d(in_channels - self.split, out_channels, 1)
        self.norm_rep = nn.BatchNorm2d(out_channels)
        self.norm_cheap = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rep, rest = x[:, : self.split], x[:, self.split :]
        rep = self.norm_rep(self.group_wise(rep) + self.point_wise(rep))
        rest = self.norm_cheap(self.cheap(rest))
        weights = torch.softmax(torch.stack([rep.mean((2, 3)), rest.mean((2, 3))], dim=-1), dim=-1)
        return rep * weights[..., 0, None, None] + rest * weights[..., 1, None, None]


def can_split(in_channels: int, out_channels: int, ratio: float = 0.5, groups: int = 2) -> bool:
    split = int(in_channels * ratio)
    return 0 < split < in_channels and split % groups == 0 and out_channels % groups == 0


def sp_conv(in_channels: int, out_channels: int) -> nn.Module:
    """SPConv where the channels can be split; a plain 3x3 convolution where they cannot (the
    first layer of a 1- or 3-channel image)."""
    if can_split(in_channels, out_channels):
        return SPConv(in_channels, out_channels)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class SPDoubleConv(nn.Sequential):
    """U-Net's DoubleConv with each 3x3 convolution replaced by SPConv (Zhang et al., IJCAI
    2020)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            sp_conv(in_channels, out_channels), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            sp_conv(out_channels, out_channels), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _Residual(nn.Module):
    """act(body(x) + shortcut(x)), the shortcut projected by a 1x1 convolution when the widths
    differ (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)."""

    def __init__(self, in_channels: int, out_channels: int, body: nn.Module):
        super().__init__()
        self.body = body
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class _Branches(nn.Module):
    """Parallel branches on one input, concatenated, fused by a 1x1 convolution and batch norm."""

    def __init__(self, branches: Sequence[nn.Module], branch_channels: int, out_channels: int):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.fuse = nn.Sequential(nn.Conv2d(branch_channels, out_channels, 1, bias=False),
                                  nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


class MFE(_Residual):
    """Multi-scale feature extraction (MC-Net's MFE): four parallel branches with receptive fields
    1, 3, 5 and 7 built from stacked 3x3 convolutions, as in Inception (Szegedy et al., "Going
    Deeper with Convolutions", CVPR 2015; "Rethinking the Inception Architecture for Computer
    Vision", CVPR 2016), concatenated, fused by a 1x1 convolution, with a residual shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        width = max(1, out_channels // 4)

        def stack(n: int) -> nn.Sequential:
            return nn.Sequential(*(conv_bn_act(in_channels if i == 0 else width, width)
                                   for i in range(n)))

        branches = [conv_bn_act(in_channels, width, kernel_size=1), stack(1), stack(2), stack(3)]
        super().__init__(in_channels, out_channels, _Branches(branches, 4 * width, out_channels))


class CIE(_Residual):
    """Context information extraction (MC-Net's CIE): parallel 3x3 convolutions dilated by 1, 2
    and 4 see context at three ranges without losing resolution (Yu & Koltun, "Multi-Scale Context
    Aggregation by Dilated Convolutions", ICLR 2016; parallel rates as in DeepLab's ASPP, Chen et
    al., TPAMI 2018), concatenated, fused by a 1x1 convolution, with a residual shortcut."""

    rates = (1, 2, 4)

    def __init__(self, in_channels: int, out_channels: int):
        width = max(1, out_channels // 2)
        branches = [conv_bn_act(in_channels, width, dilation=r) for r in self.rates]
        super().__init__(in_channels, out_channels,
                         _Branches(branches, len(self.rates) * width, out_channels))


class ConvModule(nn.Sequential):
    """MC-Net's convolution module: CIE on the block's input, U-Net's DoubleConv, then MFE."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(CIE(in_channels, in_channels), DoubleConv(in_channels, out_channels),
                         MFE(out_channels, out_channels))


class ResidualAttention(nn.Module):
    """Residual attention on a skip connection (MC-Net's RA): the skip is re-weighted by an
    attention map gated by the decoder features, as in Attention U-Net (Oktay et al., MIDL 2018),
    and kept whole by the residual form (1 + M) * F of the Residual Attention Network (Wang et al.,
    CVPR 2017), so that attention can emphasise but never erase encoder detail."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.skip_proj = nn.Sequential(nn.Conv2d(channels, inner, 1, bias=False),
                                       nn.BatchNorm2d(inner))
        self.gate_proj = nn.Sequential(nn.Conv2d(channels, inner, 1, bias=False),
                                       nn.BatchNorm2d(inner))
        self.act = nn.ReLU(inplace=True)
        # The sigmoid is a gate, not a hidden activation: an activation swap leaves it alone.
        self.attention = nn.Sequential(nn.Conv2d(inner, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        weights = self.attention(self.act(self.skip_proj(skip) + self.gate_proj(decoder)))
        return skip * (1 + weights)


BLOCKS = {"doubleconv": DoubleConv, "spconv": SPDoubleConv, "mfe": MFE, "cie": CIE,
          "convmodule": ConvModule}
SKIPS = {"concat": lambda channels: PlainSkip(), "ra": ResidualAttention}
PRESETS = {"v1": ("doubleconv", "concat"), "v3": ("spconv", "concat"),
           "v4": ("doubleconv", "ra"), "v5": ("convmodule", "ra")}


def _divisor(kwargs: dict) -> int:
    return 2 ** len(kwargs.get("features") or (64, 128, 256, 512))


@register("mcnet", divisor=_divisor)
def mcnet(preset: str | None = "v1", block: str | None = None, skip: str | None = None,
          features: Sequence[int] = (64, 128, 256, 512), in_channels: int = 3,
          classes: int = 1) -> UNet:
    """An MC-Net version: `preset` picks block and skip; `block`/`skip` override either."""
    if preset is not None and str(preset) not in PRESETS:
        hint = (" (v2 is v1 trained with augmentation, an experiment rather than a model: use "
                "mcnet_version=v2, i.e. model.preset=v1 augmentation=basic)"
                if str(preset) == "v2" else "")
        raise SegbenchError(f"unknown mcnet preset {preset!r}{hint}; "
                            f"available: {', '.join(PRESETS)}")
    default_block, default_skip = (PRESETS[str(preset)] if preset is not None
                                   else ("doubleconv", "concat"))
    block, skip = block or default_block, skip or default_skip
    if block not in BLOCKS:
        raise SegbenchError(f"unknown mcnet block {block!r}; available: {', '.join(BLOCKS)}")
    if skip not in SKIPS:
        raise SegbenchError(f"unknown mcnet skip {skip!r}; available: {', '.join(SKIPS)}")
    return UNet(in_channels, classes, features, block=BLOCKS[block], skip=SKIPS[skip])
