"""`segbench export`: ONNX, torch.export and TorchScript files whose outputs match PyTorch's to
1e-4 (ONNX at any height and width), with a model card beside them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import read_json, run_cli
from model_cases import SMALL_MODELS, model_cfg, single_thread  # noqa: F401  (fixture)
from segbench.models import build_model
from segbench.models.export import RUNNERS, export_model, run_onnx, run_torchscript


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", ["mcnet-v5", "unet"])
def test_round_trip_through_the_pad_and_crop_path(tmp_path, case, fmt):
    """70x90 is no multiple of the models' divisors: the exported graph pads and crops too."""
    torch.manual_seed(0)
    model = build_model(model_cfg(SMALL_MODELS[case], height=70, width=90))
    assert 70 % model.divisor and 90 % model.divisor
    model.eval()
    for m in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    check = export_model(model, fmt, path, (3, 70, 90))
    assert check["max_abs_diff"] <= 1e-4
    assert check["checked_with"] == ("onnxruntime" if fmt == "onnx" else "torch.jit.load")
    if fmt == "onnx":  # any height and width: checked at two sizes besides 70x90
        assert check["dynamic"] == ["batch", "height", "width"]
        assert check["checked_sizes"] == [[83, 97], [106, 62]]
        assert check["max_abs_diff_other_sizes"] <= 1e-4
    # And on a batch size the export never saw, against the PyTorch model once more.
    batch = torch.rand(3, 3, 70, 90)
    run = run_onnx if fmt == "onnx" else run_torchscript
    got = run(path, batch.numpy())
    with torch.no_grad():
        expected = model(batch).numpy()
    assert got.shape == (3, 1, 70, 90)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_onnx_graph_passes_the_checker(tmp_path):
    import onnx

    model = build_model(model_cfg(SMALL_MODELS["mcnet-v3"])).eval()
    export_model(model, "onnx", tmp_path / "m.onnx", (3, 64, 64))
    graph = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    assert [i.name for i in graph.graph.input] == ["image"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the shared tiny run, so that exports do not change the shared one."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_onnx_runs_at_sizes_it_was_not_exported_at(tmp_path):
    """The issue's 96x80 on a model exported at 64x64 (encoder divisor 8): onnxruntime gives
    PyTorch's logits at two other sizes and batch sizes."""
    torch.manual_seed(1)
    model = build_model(model_cfg(SMALL_MODELS["unet"], height=64, width=64)).eval()
    export_model(model, "onnx", tmp_path / "m.onnx", (3, 64, 64))
    for shape in ((1, 3, 96, 80), (3, 3, 45, 130)):
        batch = torch.rand(shape)
        with torch.no_grad():
            expected = model(batch).numpy()
        np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", batch.numpy()), expected,
                                   atol=1e-4, rtol=0)


def test_exported_program_round_trip(tmp_path):
    torch.manual_seed(2)
    model = build_model(model_cfg(SMALL_MODELS["unet"], height=70, width=90)).eval()
    check = export_model(model, "exported_program", tmp_path / "m.pt2", (3, 70, 90))
    assert check["checked_with"] == "torch.export.load" and check["max_abs_diff"] <= 1e-4
    batch = torch.rand(3, 3, 70, 90)  # a batch size the export never saw
    with torch.no_grad():
        expected = model(batch).numpy()
    np.testing.assert_allclose(RUNNERS["exported_program"](tmp_path / "m.pt2", batch.numpy()),
                               expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "exported_program", "torchscript"])
def test_export_command_writes_a_checked_file_into_the_run(run_copy, tmp_path, fmt):
    proc = run_cli("export", f"run_dir={run_copy}", f"format={fmt}", cwd=tmp_path)
    name = {"onnx": "model.onnx", "exported_program": "model.pt2",
            "torchscript": "model.torchscript.pt"}[fmt]
    out = run_copy / "export" / name
    info = read_json(out.with_name(name + ".json"))
    assert info["max_abs_diff"] <= 1e-4 and info["format"] == fmt and info["checkpoint"] == "best"
    size = ["height", "width"] if fmt == "onnx" else [64, 64]
    assert info["input"]["shape"] == ["batch", 3, *size] and info["input"]["range"] == [0.0, 1.0]
    assert "max |difference| from PyTorch" in proc.stdout
    # The model card: what a user of the file needs, from the run's own records.
    card, metrics = info["card"], read_json(run_copy / "metrics.json")
    assert card["threshold"] == 0.5 and card["classes"] == 1
    assert card["training_data"]["split_fingerprint"] \
        == read_json(run_copy / "split.json")["fingerprint"]
    dice = card["test_metrics"]["dice"]
    assert dice["mean"] == pytest.approx(metrics["test"]["dice"], abs=1e-5)
    assert dice["ci95"][0] <= dice["mean"] <= dice["ci95"][1]
    assert card["exported_with"]["torch"] == torch.__version__ and card["trained_with"]["torch"]
    assert "64x64" in card["preprocessing"]["resize"] and info["normalisation"]["std"]
    md = out.with_name(name + ".md").read_text()
    assert md.startswith(f"# Model card: {name}") and "95% CI" in md
    assert "sigmoid(logits) >= 0.5" in md
    # The file runs on its own and agrees with the run's best checkpoint.
    from omegaconf import OmegaConf

    from segbench.runs.checkpoint import load_checkpoint

    model = build_model(OmegaConf.load(run_copy / "config.yaml"))
    model.load_state_dict(load_checkpoint(run_copy / "checkpoints" / "best.pt")["model"])
    batch = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(batch).numpy()
    got = RUNNERS[fmt](out, batch.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_export_fails_clearly(run_copy, tmp_path):
    proc = run_cli("export", f"run_dir={run_copy}", "format=tflite", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "use format=onnx, format=exported_program (torch.export) or " \
        "format=torchscript" in proc.stdout + proc.stderr
    proc = run_cli("export", f"run_dir={tmp_path}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "not a segbench run directory" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_per_image_normalisation_is_part_of_the_exported_graph(tmp_path, fmt):
    """dataset.normalisation=per_image travels inside the file: the exported model standardises
    each image itself, so a brighter copy of an image gives the same logits there too."""
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    cfg = OmegaConf.merge(model_cfg(SMALL_MODELS["unet"], height=70, width=90),
                          {"dataset": {"normalisation": "per_image"}})
    model = build_model(cfg).eval()
    path = tmp_path / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    check = export_model(model, fmt, path, (3, 70, 90))
    assert check["max_abs_diff"] <= 1e-4
    batch = torch.rand(2, 3, 70, 90) * 0.4
    run = run_onnx if fmt == "onnx" else run_torchscript
    np.testing.assert_allclose(run(path, (batch * 2 + 0.1).numpy()), run(path, batch.numpy()),
                               atol=1e-3, rtol=0)


def test_the_model_card_says_how_an_image_is_normalised():
    from segbench.models.export import _normalisation_text

    per_image = _normalisation_text({"mean": [0.0] * 3, "std": [1.0] * 3, "per_image": True})
    assert "each image by its own statistics" in per_image and "0.01" in per_image
    fixed = _normalisation_text({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    assert fixed == ("inside the model: (x - mean) / std, mean [0.485, 0.456, 0.406], "
                     "std [0.229, 0.224, 0.225]")
