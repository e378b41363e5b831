"""The `activation` study axis: replace every hidden activation of a network with one kind.

Output logits never get an activation here: losses and metrics take logits.
"""

from __future__ import annotations

from torch import nn

from segbench import SegbenchError

# Module types that count as hidden activations. Sigmoid/Tanh modules a network holds are gates
# (attention, squeeze-excitation), not hidden activations, and are left alone; a sigmoid or tanh
# put in by a swap is marked so that a later swap finds it.
HIDDEN_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.PReLU)

_FACTORIES = {
    "relu": lambda cfg: nn.ReLU(inplace=True),
}


def make_activation(cfg) -> nn.Module:
    name = cfg["name"] if not isinstance(cfg, str) else cfg
    if name not in _FACTORIES:
        raise SegbenchError(f"unknown activation {name!r}; available: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name](cfg)


def is_hidden_activation(module: nn.Module) -> bool:
    return isinstance(module, HIDDEN_TYPES) or getattr(module, "_segbench_hidden", False)


def swap_activations(net: nn.Module, cfg) -> int:
    """Replace every hidden activation module in place; returns how many were replaced."""
    make_activation(cfg)  # fail before touching the network
    count = 0
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if is_hidden_activation(child):
                new = make_activation(cfg)
                new._segbench_hidden = True
                setattr(parent, child_name, new)
                count += 1
    return count
