"""`segbench explain`: Grad-CAM and mean activation at the encoder's and the decoder's end."""

from __future__ import annotations

import numpy as np
import torch

from conftest import run_cli
from segbench.inspection.gradcam import explain, find_layers
from segbench.models.unet import UNet


def test_grad_cam_of_a_linear_head_is_its_logit_map():
    # features -> 1x1 head with weights w: d(sum of logits over the mask)/dA_k = w_k on the mask,
    # so the channel weights are w_k * (mask share) and the map is relu(logit - bias), scaled.
    torch.manual_seed(0)
    features = torch.nn.Conv2d(3, 4, 3, padding=1)
    head = torch.nn.Conv2d(4, 1, 1)
    net = torch.nn.Sequential(features, head)
    image = torch.rand(1, 3, 16, 16)
    maps = explain(net, image, 0.5, {"encoder end": "0", "decoder end": "0"})
    with torch.no_grad():
        expected = torch.relu(net(image)[0, 0] - head.bias)
    np.testing.assert_allclose(maps.cam["encoder end"], (expected / expected.max()).numpy(),
                               atol=1e-5)
    with torch.no_grad():
        mean = features(image)[0].mean(0)
    mean = (mean - mean.min()) / (mean.max() - mean.min())
    np.testing.assert_allclose(maps.activation["decoder end"], mean.numpy(), atol=1e-5)
    assert maps.prob.shape == (16, 16)


def test_layers_are_found_from_the_forward_pass():
    model = UNet(3, 1, (4, 8))
    assert find_layers(model, torch.rand(1, 3, 16, 16)) == {"encoder end": "bottleneck",
                                                            "decoder end": "decode.1"}


def test_explain_a_run(tiny_run, tmp_path):
    case = (tiny_run / "per_case.csv").read_text().splitlines()[1].split(",")[0]
    proc = run_cli("explain", f"run_dir={tiny_run}", f"cases=[{case}]", "hydra.run.dir=out",
                   cwd=tmp_path)
    assert (tmp_path / "out" / "explain.png").stat().st_size > 10_000
    assert "encoder end: encoder." in proc.stdout + proc.stderr


def test_a_case_not_in_the_test_split_is_one_line(tiny_run, tmp_path):
    proc = run_cli("explain", f"run_dir={tiny_run}", "cases=[nosuch]", "hydra.run.dir=out",
                   cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "nosuch not in the run's test split" in out
    assert "Traceback" not in out
