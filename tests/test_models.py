"""Every model and mcnet preset trains (forward + backward) and returns logits of the input's size;
parameter counts match the studies' tables; bad model options fail with a clear message."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from model_cases import SMALL_MODELS, model_cfg, single_thread  # noqa: F401  (fixture)
from segbench import SegbenchError
from segbench.models import build_model, create_model, list_models
from segbench.models.registry import model_kwargs, size_divisor, standardise
from segbench.models.smp_models import smp_divisor


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_every_registered_model_has_a_small_case():
    assert {case["name"] for case in SMALL_MODELS.values()} == set(list_models())
    assert set(list_models()) >= {"unet", "unetpp", "fpn", "deeplabv3plus", "smp", "mcnet",
                                       "classic_unet"}


# Each model with ReLU (its own) and one other activation; across the models, every activation.
OTHER_ACTIVATIONS = ["gelu", "prelu", "leakyrelu", "silu", "mish", "elu", "tanh", "sigmoid"]
FORWARD_CASES = [(case, activation) for i, case in enumerate(SMALL_MODELS)
                 for activation in ("relu", OTHER_ACTIVATIONS[i % len(OTHER_ACTIVATIONS)])]


@pytest.mark.parametrize("case, activation", FORWARD_CASES)
def test_forward_backward_at_64(case, activation):
    torch.manual_seed(0)
    model = build_model(model_cfg(SMALL_MODELS[case], activation))
    model.train()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    logits = model(x)
    assert logits.shape == (2, 1, 64, 64)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, (x[:, :1] > 127).float())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    # Every parameter learns: none is cut off from the loss (gates, skips, PReLU slopes included;
    # smp's unused deeper encoder stages are dropped at build time).
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(int(g.abs().sum() > 0) for g in grads) >= 0.95 * len(grads)


# One case per registered model at 576x720 (Kvasir-Instrument's frames); every case at an odd size.
SIZE_CASES = [(case, (50, 70)) for case in SMALL_MODELS] + [
    (case, (576, 720)) for case in ["unet", "unetpp", "fpn", "deeplabv3plus", "smp-PAN", "mcnet-v5",
                                    "classic_unet"]]


@pytest.mark.parametrize("case, size", SIZE_CASES, ids=[f"{c}-{h}x{w}" for c, (h, w) in SIZE_CASES])
def test_any_size_is_padded_and_cropped_back(case, size):
    """Logits of exactly the input's size, whatever size the network itself takes."""
    model = build_model(model_cfg(SMALL_MODELS[case], height=size[0], width=size[1])).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, *size)).shape == (1, 1, *size)


SMP_ARCHS = ["Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3",
             "DeepLabV3Plus", "PAN", "UPerNet", "Segformer"]


@pytest.mark.parametrize("depth", [3, 5])
@pytest.mark.parametrize("arch", SMP_ARCHS)
def test_smp_divisor_is_what_the_network_takes(arch, depth):
    """Unpadded, each smp architecture returns logits of the input's size at multiples of the
    divisor the registry reports (and smp's own shape check agrees)."""
    kwargs = {"arch": arch, "encoder": "resnet18", "encoder_depth": depth}
    divisor = smp_divisor(kwargs)
    net = create_model("smp", **kwargs).eval()
    with torch.no_grad():
        for h, w in [(divisor, 2 * divisor), (3 * divisor, divisor)]:
            assert net(torch.rand(1, 3, h, w)).shape[-2:] == (h, w), (arch, depth, divisor, h, w)


def test_divisors_of_the_registered_models():
    assert size_divisor("unet", encoder_depth=5) == 32
    assert size_divisor("fpn", arch="FPN", encoder_depth=4) == 16
    assert size_divisor("deeplabv3plus", arch="DeepLabV3Plus", encoder_depth=5) == 16
    assert size_divisor("deeplabv3plus", arch="DeepLabV3Plus", encoder_depth=5,
                        encoder_output_stride=8) == 8
    assert size_divisor("smp", arch="PAN", encoder_depth=5) == 128
    assert size_divisor("mcnet", features=[64, 128, 256, 512]) == 16
    assert size_divisor("classic_unet", depth=3) == 8


def test_without_padding_a_size_the_model_cannot_take_fails_with_the_nearest_sizes():
    cfg = model_cfg(SMALL_MODELS["mcnet-v1"], height=50, width=64, pad=False)
    with pytest.raises(SegbenchError, match="divisible by 4.*pad_to_multiple=true"):
        build_model(cfg)


# The CT study's table: v1 31,037,633 exactly; v3 13.0M and v5 77.4M there (docs/models.md).
@pytest.mark.parametrize("preset, expected", [("v1", 31_037_633), ("v3", 13_025_921),
                                               ("v4", 31_388_205), ("v5", 74_434_579)])
def test_mcnet_parameter_counts(preset, expected):
    assert n_params(create_model("mcnet", preset=preset, in_channels=3, classes=1)) == expected


def test_classic_unet_parameter_count_and_width():
    assert n_params(create_model("classic_unet")) == 7_763_041  # base width 32, as in the LGG code
    narrow = create_model("classic_unet", base_width=16)
    assert narrow.down[0][0][0].out_channels == 16 and narrow.bottleneck[0][0].out_channels == 256


def test_spconv_splits_channels_and_falls_back_on_the_first_layer():
    from segbench.models.mcnet import SPConv, SPDoubleConv

    block = SPDoubleConv(3, 16)
    assert isinstance(block[0], torch.nn.Conv2d)  # 3 channels cannot be split into 2 groups
    assert isinstance(block[3], SPConv)
    sp = SPConv(16, 32)
    assert sp.group_wise.in_channels == 8 and sp.cheap.in_channels == 8
    assert sp.group_wise.groups == 2
    # Far fewer weights than the 3x3 convolution it replaces.
    assert n_params(sp) < 0.45 * 16 * 32 * 9


def test_residual_attention_keeps_the_skip_whole():
    from segbench.models.mcnet import ResidualAttention

    ra = ResidualAttention(8).eval()
    skip, gate = torch.rand(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        out = ra(skip, gate)
    ratio = out / skip
    assert out.shape == skip.shape
    assert (ratio >= 1 - 1e-6).all() and (ratio <= 2 + 1e-6).all()  # (1 + attention) * skip


def test_mcnet_block_and_skip_override_the_preset():
    net = create_model("mcnet", preset="v1", skip="ra", features=[8, 16])
    assert type(net.skip[0]).__name__ == "ResidualAttention"
    assert type(net.down[0]).__name__ == "DoubleConv"


def test_mcnet_v2_is_a_training_setting_not_a_model():
    with pytest.raises(SegbenchError, match="mcnet_version=v2"):
        create_model("mcnet", preset="v2")
    with pytest.raises(SegbenchError, match="unknown mcnet block 'dense'.*convmodule"):
        create_model("mcnet", block="dense")
    with pytest.raises(SegbenchError, match="mcnet has no option base_width; its options: preset"):
        create_model("mcnet", base_width=8)


def test_smp_options_are_checked_with_the_fix_in_the_message():
    with pytest.raises(SegbenchError, match="no architecture 'Unet3'.*Linknet"):
        create_model("smp", arch="Unet3")
    with pytest.raises(SegbenchError, match="one width.*not the list"):
        create_model("deeplabv3plus", arch="DeepLabV3Plus", encoder="resnet18",
                     decoder_channels=[32, 16])
    with pytest.raises(SegbenchError, match="one width per decoder stage"):
        create_model("unet", encoder="resnet18", encoder_depth=3, decoder_channels=[32, 16])
    with pytest.raises(SegbenchError, match="no decoder width"):
        create_model("smp", arch="Linknet", encoder="resnet18", decoder_channels=32)
    with pytest.raises(SegbenchError, match="encoder"):
        create_model("unet", encoder="resnet1800")


def test_fpn_width_option_reaches_the_decoder():
    net = create_model("fpn", arch="FPN", encoder="resnet18", encoder_depth=3, decoder_channels=24)
    widths = {m.out_channels for m in net.decoder.modules() if isinstance(m, torch.nn.Conv2d)}
    assert 24 in widths


def test_config_kwargs_reach_the_model():
    cfg = model_cfg({"name": "mcnet", "preset": "v3", "features": [4, 8, 16]}, channels=1)
    assert model_kwargs(cfg) == {"preset": "v3", "features": [4, 8, 16], "in_channels": 1,
                                 "classes": 1}
    model = build_model(cfg)
    assert model.net.down[0][0].in_channels == 1 and model.divisor == 8


def test_per_image_normalisation_makes_the_model_blind_to_intensity_scale():
    """dataset.normalisation=per_image: an MRI slice scanned twice as bright (and offset) gives
    the same logits; with the fixed mean/std it does not."""
    torch.manual_seed(0)
    cfg = model_cfg(SMALL_MODELS["unet"])
    per_image = build_model(OmegaConf.merge(cfg, {"dataset": {"normalisation": "per_image"}}))
    fixed = build_model(cfg)
    fixed.net.load_state_dict(per_image.net.state_dict())  # the same network weights
    per_image.eval(), fixed.eval()
    x = torch.rand(2, 3, 64, 64) * 0.4
    brighter = x * 2 + 0.1
    with torch.no_grad():
        torch.testing.assert_close(per_image(brighter), per_image(x), atol=1e-4, rtol=0)
        assert (fixed(brighter) - fixed(x)).abs().max() > 1e-2
    assert per_image.per_image and not fixed.per_image
    assert per_image.mean.abs().max() == 0 and (per_image.std == 1).all()


def test_standardise_floors_the_deviation_of_a_flat_image():
    flat = torch.full((1, 3, 8, 8), 0.3)
    flat[0, 0, 0, 0] = 0.3001  # almost flat: not blown up into large values
    z = standardise(flat)
    assert z.abs().max() < 0.01 + 1e-6
    assert standardise(torch.zeros(1, 1, 4, 4)).abs().max() == 0
    noisy = torch.rand(2, 3, 16, 16)
    z = standardise(noisy)
    torch.testing.assert_close(z.mean((2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.pow(2).mean((2, 3)), torch.ones(2, 3), atol=1e-4, rtol=0)


def test_an_unknown_normalisation_is_one_line_naming_the_options():
    cfg = OmegaConf.merge(model_cfg(SMALL_MODELS["unet"]), {"dataset": {"normalisation": "z"}})
    with pytest.raises(SegbenchError, match="dataset.normalisation=z: use fixed .* or per_image"):
        build_model(cfg)
