"""Small configurations of every registered model (and every mcnet preset and block), shared by
the model, activation and export tests: narrow widths, shallow encoders, CPU-fast at 64x64."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

SMALL_RESNET = {"encoder": "resnet18", "encoder_depth": 3}

# id -> model config (what configs/model/<name>.yaml would hold, made small)
SMALL_MODELS = {
    "unet": {"name": "unet", "arch": "Unet", **SMALL_RESNET, "decoder_channels": [32, 16, 8]},
    "unetpp": {"name": "unetpp", "arch": "UnetPlusPlus", **SMALL_RESNET,
               "decoder_channels": [32, 16, 8]},
    "fpn": {"name": "fpn", "arch": "FPN", **SMALL_RESNET, "decoder_channels": 32,
            "decoder_segmentation_channels": 32},
    "deeplabv3plus": {"name": "deeplabv3plus", "arch": "DeepLabV3Plus", **SMALL_RESNET,
                      "encoder_output_stride": 16, "decoder_channels": 32,
                      "decoder_atrous_rates": [2, 4, 6]},
    "smp-Linknet": {"name": "smp", "arch": "Linknet", **SMALL_RESNET},
    "smp-MAnet": {"name": "smp", "arch": "MAnet", **SMALL_RESNET, "decoder_channels": [32, 16, 8],
                  "decoder_pab_channels": 8},
    "smp-PAN": {"name": "smp", "arch": "PAN", **SMALL_RESNET, "decoder_channels": 16},
    "mcnet-v1": {"name": "mcnet", "preset": "v1", "features": [8, 16]},
    "mcnet-v3": {"name": "mcnet", "preset": "v3", "features": [8, 16]},
    "mcnet-v4": {"name": "mcnet", "preset": "v4", "features": [8, 16]},
    "mcnet-v5": {"name": "mcnet", "preset": "v5", "features": [8, 16]},
    "mcnet-mfe": {"name": "mcnet", "preset": None, "block": "mfe", "skip": "concat",
                  "features": [8, 16]},
    "mcnet-cie-ra": {"name": "mcnet", "preset": None, "block": "cie", "skip": "ra",
                     "features": [8, 16]},
    "classic_unet": {"name": "classic_unet", "base_width": 8, "depth": 3},
}


def model_cfg(model: dict, activation: str = "relu", height: int = 64, width: int = 64,
              channels: int = 3, pad: bool = True):
    """The parts of a training config that build_model reads."""
    return OmegaConf.create({
        "model": {**model, "in_channels": channels, "classes": 1, "pad_to_multiple": pad},
        "activation": {"name": activation},
        "resolution": {"height": height, "width": width},
    })


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread for these many tiny forward passes: with the machine's cores shared,
    two spinning OpenMP threads made each pass 10-50x slower. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
