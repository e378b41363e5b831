"""The activation swap replaces every hidden activation of every model, encoders included, leaves
gates alone and never puts an activation on the output logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model_cases import SMALL_MODELS, model_cfg, single_thread  # noqa: F401  (fixture)
from segbench import SegbenchError
from segbench.models import build_model
from segbench.models.activations import (
    available_activations,
    count_hidden_activations,
    make_activation,
    swap_activations,
)

GATES = (torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.Softmax, torch.nn.Hardsigmoid)


class OpCounter(TorchDispatchMode):
    """Counts the aten operators a forward pass runs (module calls and F.* calls alike)."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def run_ops(model, size=64) -> dict[str, int]:
    with OpCounter() as ops, torch.no_grad():
        model(torch.rand(1, 3, size, size))
    return ops.counts


def test_every_activation_has_a_config_and_a_factory():
    from segbench import config_dir

    names = {p.stem for p in (config_dir() / "activation").glob("*.yaml")}
    assert names == set(available_activations()) == {
        "relu", "leakyrelu", "gelu", "silu", "mish", "elu", "prelu", "tanh", "sigmoid"}
    assert make_activation({"name": "leakyrelu", "negative_slope": 0.2}).negative_slope == 0.2
    assert make_activation({"name": "elu", "alpha": 0.5}).alpha == 0.5


@pytest.mark.parametrize("case", list(SMALL_MODELS))
def test_swap_replaces_every_hidden_activation_and_no_gate(case):
    model = build_model(model_cfg(SMALL_MODELS[case], "relu")).eval()
    before = count_hidden_activations(model)
    gates_before = sum(isinstance(m, GATES) for m in model.modules())
    n = sum(before.values())
    assert n > 0 and set(before) == {"ReLU"}
    relu_calls = run_ops(model).get("relu", 0) + run_ops(model).get("relu_", 0)
    assert relu_calls > 0

    assert swap_activations(model, {"name": "gelu"}) == n
    assert count_hidden_activations(model) == {"GELU": n}
    assert sum(isinstance(m, GATES) for m in model.modules()) == gates_before
    ops = run_ops(model)
    # No ReLU is left anywhere, not even as a function call, and every former ReLU now runs GELU.
    assert ops.get("relu", 0) + ops.get("relu_", 0) == 0
    assert ops.get("gelu", 0) == relu_calls

    # A second swap finds the first one's modules, sigmoid being marked as hidden, not a gate.
    assert swap_activations(model, {"name": "sigmoid"}) == n
    assert swap_activations(model, {"name": "prelu"}) == n
    assert count_hidden_activations(model) == {"PReLU": n}
    assert sum(isinstance(m, GATES) for m in model.modules()) == gates_before


@pytest.mark.parametrize("case", ["unet", "fpn", "deeplabv3plus", "mcnet-v5", "classic_unet"])
def test_output_is_raw_logits_whatever_the_activation(case):
    model = build_model(model_cfg(SMALL_MODELS[case], "sigmoid")).eval()
    last = []
    hooks = [m.register_forward_hook(lambda mod, i, o: last.append(mod))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    # The last layer that computes anything is a convolution (smp heads may upsample after it).
    computing = [m for m in last
                 if not isinstance(m, (torch.nn.Identity, torch.nn.UpsamplingBilinear2d,
                                       torch.nn.Upsample, torch.nn.Dropout))]
    assert isinstance(computing[-1], (torch.nn.Conv2d, torch.nn.ConvTranspose2d)), computing[-1]


def test_prelu_adds_one_learned_slope_per_activation():
    relu = build_model(model_cfg(SMALL_MODELS["mcnet-v1"], "relu"))
    prelu = build_model(model_cfg(SMALL_MODELS["mcnet-v1"], "prelu"))
    n = sum(count_hidden_activations(relu).values())
    assert sum(p.numel() for p in prelu.parameters()) \
        - sum(p.numel() for p in relu.parameters()) == n


def test_unknown_activation_lists_the_choices():
    with pytest.raises(SegbenchError, match="unknown activation 'swish2'.*gelu.*tanh"):
        build_model(model_cfg(SMALL_MODELS["mcnet-v1"], "swish2"))
