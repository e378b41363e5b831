"""The `activation` study axis: replace every hidden activation of a network with one kind.

The swap walks the whole module tree, smp/timm encoders included, and replaces each hidden
activation module in place. Output logits never get an activation here: losses and metrics take
logits, and no network in segbench ends in one (smp heads are built with activation=None).
Activations a network applies as function calls in its forward (F.relu) cannot be reached by a
module swap; the encoders segbench's configs use (ResNets) have none.
"""

from __future__ import annotations

from torch import nn

from segbench import SegbenchError

# Module types that count as hidden activations. Sigmoid/Tanh/Hardsigmoid modules a network holds
# are gates (attention, squeeze-excitation), not hidden activations, and are left alone; a sigmoid
# or tanh put in by a swap is marked so that a later swap finds it.
HIDDEN_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU,
                nn.SELU, nn.PReLU, nn.RReLU, nn.Hardswish)
# timm's and smp's own activation classes (timm.layers GELU/QuickGELU/..., smp's EfficientNet
# Swish), matched by name so that neither library has to be imported here.
HIDDEN_NAMES = frozenset({"GELU", "GELUTanh", "QuickGELU", "Swish", "SwishMe",
                          "MemoryEfficientSwish", "HardSwish", "HardSwishMe", "Mish", "MishMe",
                          "HardMish", "HardMishMe"})


def _leakyrelu(cfg, inplace):
    slope = float(cfg.get("negative_slope", 0.01))
    # In-place LeakyReLU cannot be differentiated with a negative slope.
    return nn.LeakyReLU(slope, inplace=inplace and slope >= 0)


# Each factory takes the activation's config and whether the module it replaces was in place
# (only then is an in-place replacement known to be safe at that spot).
_FACTORIES = {
    "relu": lambda cfg, inplace: nn.ReLU(inplace=inplace),
    "leakyrelu": _leakyrelu,
    "gelu": lambda cfg, inplace: nn.GELU(approximate=str(cfg.get("approximate", "none"))),
    "silu": lambda cfg, inplace: nn.SiLU(),
    "mish": lambda cfg, inplace: nn.Mish(),
    "elu": lambda cfg, inplace: nn.ELU(alpha=float(cfg.get("alpha", 1.0))),
    "prelu": lambda cfg, inplace: nn.PReLU(num_parameters=1, init=float(cfg.get("init", 0.25))),
    "tanh": lambda cfg, inplace: nn.Tanh(),
    "sigmoid": lambda cfg, inplace: nn.Sigmoid(),
}


def available_activations() -> list[str]:
    return sorted(_FACTORIES)


def make_activation(cfg, inplace: bool = False) -> nn.Module:
    cfg = {"name": cfg} if isinstance(cfg, str) else cfg
    name = cfg["name"]
    if name not in _FACTORIES:
        raise SegbenchError(f"unknown activation {name!r}; "
                            f"available: {', '.join(available_activations())}")
    return _FACTORIES[name](cfg, inplace)


def is_hidden_activation(module: nn.Module) -> bool:
    return (isinstance(module, HIDDEN_TYPES) or type(module).__name__ in HIDDEN_NAMES
            or getattr(module, "_segbench_hidden", False))


def count_hidden_activations(net: nn.Module) -> dict[str, int]:
    """How many hidden activation modules of each type the network holds."""
    counts: dict[str, int] = {}
    for module in net.modules():
        if is_hidden_activation(module):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def swap_activations(net: nn.Module, cfg) -> int:
    """Replace every hidden activation module in place; returns how many were replaced."""
    make_activation(cfg)  # fail before touching the network
    count = 0
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if is_hidden_activation(child):
                new = make_activation(cfg, inplace=bool(getattr(child, "inplace", False)))
                # torch types Module attributes as Tensor | Module; a plain flag is allowed too
                new._segbench_hidden = True  # type: ignore[assignment]
                setattr(parent, child_name, new)
                count += 1
    return count
