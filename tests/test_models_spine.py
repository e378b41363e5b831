"""The shared model wrapper: any input size in, logits of the same size out."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from segbench import SegbenchError
from segbench.models import build_model


def cfg(h, w, pad=True, name="unet"):
    return OmegaConf.create({
        "model": {"name": name, "arch": "Unet" if name == "unet" else "UnetPlusPlus",
                  "encoder": "resnet18", "encoder_weights": None, "encoder_depth": 3,
                  "decoder_channels": [32, 16, 8], "in_channels": 3, "classes": 1,
                  "pad_to_multiple": pad},
        "activation": {"name": "relu"},
        "resolution": {"height": h, "width": w},
    })


@pytest.mark.parametrize("name", ["unet", "unetpp"])
@pytest.mark.parametrize("size", [(64, 64), (36, 45), (57, 72)])
def test_padding_returns_logits_of_the_input_size(name, size):
    model = build_model(cfg(*size, name=name)).eval()
    x = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_uint8_and_unit_float_inputs_give_the_same_logits():
    model = build_model(cfg(32, 32)).eval()
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.float() / 255))


def test_without_padding_an_odd_size_is_rejected_with_valid_sizes():
    with pytest.raises(SegbenchError, match=r"divisible by 8; 36x45 is not.*"
                                            r"heights \[32, 40\], widths \[40, 48\]"):
        build_model(cfg(36, 45, pad=False))
