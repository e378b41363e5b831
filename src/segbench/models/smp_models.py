"""segmentation-models-pytorch architectures: U-Net, U-Net++, FPN, DeepLabV3+ and any other smp
model by name (`model=smp model.arch=Linknet`).

Options are the same for all: `encoder` (any smp or `tu-<timm name>` encoder), `encoder_weights`
(null or imagenet), `encoder_depth`, `decoder_channels` (a list of one width per stage for
U-Net-like decoders, one width for the others), `in_channels`, `classes`; anything else in the
model config goes to the smp class as it is (e.g. `+model.decoder_attention_type=scse`).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.func import functional_call

from segbench import SegbenchError
from segbench.models.pretrained import ensure_encoder_weights, weights_error
from segbench.models.registry import register
from segbench.suggest import check_encoder

# Encoder output stride each architecture asks for by default (smp's own defaults).
_DEFAULT_OUTPUT_STRIDE = {"DeepLabV3": 8, "DeepLabV3Plus": 16, "PAN": 16}
# PAN's feature pyramid attention pools its deepest features three more times.
_EXTRA_POOLING = {"PAN": 8}
# The decoder-width argument of architectures that do not call it decoder_channels.
_WIDTH_ARGUMENT = {"FPN": "decoder_pyramid_channels", "Segformer": "decoder_segmentation_channels",
                   "PSPNet": "psp_out_channels"}


def smp_divisor(kwargs: dict, arch: str | None = None) -> int:
    """What height and width must be multiples of for this architecture to return logits of the
    input's size: its encoder's output stride (2**depth, or less when dilated), times what the
    decoder pools further (measured for each smp architecture; tests check every one)."""
    arch = arch or kwargs.get("arch", "Unet")
    depth = int(kwargs.get("encoder_depth", 5))
    stride = int(kwargs.get("encoder_output_stride") or _DEFAULT_OUTPUT_STRIDE.get(arch, 32))
    return min(stride, 2**depth) * _EXTRA_POOLING.get(arch, 1)


def _smp_class(arch: str):
    import segmentation_models_pytorch as smp  # seconds to import: only when a model is built

    cls = getattr(smp, str(arch), None)
    if not (inspect.isclass(cls) and hasattr(cls, "check_input_shape")):
        names = sorted(n for n in dir(smp) if inspect.isclass(getattr(smp, n))
                       and hasattr(getattr(smp, n), "check_input_shape") and n[0].isupper())
        raise SegbenchError(f"segmentation-models-pytorch has no architecture {arch!r}; "
                            f"set model.arch to one of: {', '.join(names)}")
    return cls


def _decoder_width(arch: str, cls, decoder_channels, depth: int) -> dict:
    params = inspect.signature(cls.__init__).parameters
    if decoder_channels is None:
        default = params["decoder_channels"].default if "decoder_channels" in params else None
        # smp's default widths are made for depth 5: the shallowest `depth` of them otherwise.
        if isinstance(default, (list, tuple)) and len(default) != depth:
            return {"decoder_channels": list(default)[-depth:]}
        return {}
    per_stage = "decoder_channels" in params and isinstance(params["decoder_channels"].default,
                                                          (list, tuple))
    if per_stage:
        widths = (list(decoder_channels) if isinstance(decoder_channels, (list, tuple))
                  else [decoder_channels])
        if len(widths) != depth:
            raise SegbenchError(
                f"model.decoder_channels has {len(widths)} entries but "
                f"model.encoder_depth={depth}: {arch} needs one width per decoder stage, e.g. "
                f"model.decoder_channels={[16 * 2**i for i in reversed(range(depth))]}"
            )
        return {"decoder_channels": widths}
    name = "decoder_channels" if "decoder_channels" in params else _WIDTH_ARGUMENT.get(arch)
    if name is None:
        raise SegbenchError(f"{arch} has no decoder width to set; use model.decoder_channels=null")
    if isinstance(decoder_channels, (list, tuple)):
        raise SegbenchError(f"{arch}'s decoder has one width: set model.decoder_channels to a "
                            f"number (e.g. {params[name].default}), not the list "
                            f"{list(decoder_channels)}")
    return {name: int(decoder_channels)}


def _create_smp(arch: str, encoder: str = "resnet34", encoder_weights: str | None = None,
                encoder_depth: int = 5, decoder_channels=None, in_channels: int = 3,
                classes: int = 1, **extra):
    cls = _smp_class(arch)
    depth = int(encoder_depth)
    if not 1 <= depth <= 5:
        raise SegbenchError(f"model.encoder_depth={depth}: smp encoders have 1 to 5 stages "
                            "(3-5 usual)")
    kwargs = dict(encoder_name=encoder, encoder_weights=encoder_weights, encoder_depth=depth,
                  in_channels=int(in_channels), classes=int(classes),
                  **_decoder_width(arch, cls, decoder_channels, depth), **extra)
    # FPN and PSPNet upsample their logits by a fixed factor made for their default depth; scale
    # it with the depth so that the logits have the input's size.
    if arch == "FPN" and "upsampling" not in extra:
        kwargs["upsampling"] = 2 ** (depth - 3)
    if arch == "PSPNet" and "upsampling" not in extra:
        kwargs["upsampling"] = 2**depth
    if isinstance(kwargs.get("decoder_atrous_rates"), list):
        kwargs["decoder_atrous_rates"] = tuple(kwargs["decoder_atrous_rates"])
    check_encoder(encoder)  # a few close names, not smp's ninety
    if encoder_weights is not None:
        ensure_encoder_weights(encoder, encoder_weights)
    try:
        net = cls(**kwargs)
    except KeyError as err:  # smp's way of saying: no such encoder, or no such weights for it
        raise SegbenchError(f"{arch}: {err.args[0] if err.args else err}. Set model.encoder to an "
                            "smp encoder (resnet34, efficientnet-b0, ...) or "
                            "tu-<timm model name>") from None
    except (ValueError, TypeError, AssertionError) as err:
        raise SegbenchError(f"{arch} cannot be built with {kwargs}: {err}") from None
    except (OSError, RuntimeError) as err:  # a download that failed half-way, a hub error
        if encoder_weights is None:
            raise
        raise weights_error(encoder, encoder_weights, str(err)) from None
    if depth < 5:
        _drop_unused_stages(net.encoder, int(in_channels), smp_divisor(kwargs, arch))
    return net


def _drop_unused_stages(encoder: nn.Module, in_channels: int, divisor: int) -> None:
    """smp builds the whole backbone whatever encoder_depth says (its pretrained weights need every
    layer) and then never runs the deeper stages. Dropped here, they no longer count as
    parameters nor sit in the optimizer and checkpoints; nothing else changes."""
    def run() -> None:
        meta = {n: torch.empty_like(t, device="meta")
                for n, t in [*encoder.named_parameters(), *encoder.named_buffers()]}
        with torch.no_grad():
            functional_call(encoder, meta, (torch.empty(1, in_channels, 2 * divisor, 2 * divisor,
                                                         device="meta"),), strict=False)

    called: set[nn.Module] = set()
    hooks = [m.register_forward_pre_hook(lambda module, args: called.add(module))
             for m in encoder.modules()]
    try:
        run()
    except Exception:  # an encoder that cannot run on meta tensors: keep it whole
        return
    finally:
        for hook in hooks:
            hook.remove()
    unused = {name: child for name, child in encoder.named_children()
              if not any(m in called for m in child.modules())
              and any(True for _ in child.parameters())}
    for name in unused:
        delattr(encoder, name)
    try:
        run()
    except Exception:  # the forward touches a dropped stage after all: put everything back
        for name, child in unused.items():
            setattr(encoder, name, child)


def _register(name: str, arch: str, doc: str):
    def create(arch: str = arch, **kwargs):
        return _create_smp(arch, **kwargs)

    create.__doc__ = doc
    register(name, divisor=lambda kw: smp_divisor(kw, kw.get("arch", arch)))(create)


_register("unet", "Unet", "U-Net (Ronneberger et al., MICCAI 2015) with an smp encoder.")
_register("unetpp", "UnetPlusPlus",
          "U-Net++ (Zhou et al., DLMIA 2018): nested dense skip pathways.")
_register("fpn", "FPN", "Feature Pyramid Network (Lin et al., CVPR 2017) as a segmentation decoder "
          "(Kirillov et al.'s panoptic FPN head).")
_register("deeplabv3plus", "DeepLabV3Plus", "DeepLabV3+ (Chen et al., ECCV 2018): atrous spatial "
          "pyramid pooling on a dilated encoder, and a light decoder.")
_register("smp", "Unet", "Any segmentation-models-pytorch architecture, named by model.arch.")
