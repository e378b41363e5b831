"""segmentation-models-pytorch architectures: U-Net, U-Net++ and any other smp model by name."""

from __future__ import annotations

from segbench import SegbenchError
from segbench.models.registry import register


def _smp_divisor(kwargs: dict) -> int:
    return 2 ** int(kwargs.get("encoder_depth", 5))


def _create_smp(arch: str, encoder: str = "resnet34", encoder_weights: str | None = None,
                encoder_depth: int = 5, decoder_channels=None, in_channels: int = 3,
                classes: int = 1, **extra):
    import segmentation_models_pytorch as smp

    cls = getattr(smp, arch, None)
    if cls is None:
        raise SegbenchError(f"segmentation-models-pytorch has no architecture {arch!r}")
    kwargs = dict(encoder_name=encoder, encoder_weights=encoder_weights,
                  encoder_depth=int(encoder_depth), in_channels=int(in_channels),
                  classes=int(classes), **extra)
    if decoder_channels is not None:
        decoder_channels = list(decoder_channels)
        if len(decoder_channels) != int(encoder_depth):
            raise SegbenchError(
                f"model.decoder_channels has {len(decoder_channels)} entries but "
                f"model.encoder_depth={encoder_depth}: give one width per decoder stage, e.g. "
                f"model.decoder_channels={[16 * 2 ** i for i in reversed(range(int(encoder_depth)))]}"
            )
        kwargs["decoder_channels"] = decoder_channels
    try:
        return cls(**kwargs)
    except KeyError as err:
        raise SegbenchError(f"unknown encoder {encoder!r} for {arch}: {err}") from None


@register("unet", divisor=_smp_divisor)
def unet(arch: str = "Unet", **kwargs):
    return _create_smp(arch, **kwargs)


@register("unetpp", divisor=_smp_divisor)
def unetpp(arch: str = "UnetPlusPlus", **kwargs):
    return _create_smp(arch, **kwargs)
