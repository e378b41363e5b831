"""The Python API: segbench.train / evaluate / predict / load_run, twice in one process, errors
as SegbenchError (never SystemExit), output directories as the CLI chooses them."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

import segbench
from conftest import TINY, read_json
from segbench import SegbenchError


def test_train_twice_in_one_process_then_evaluate_predict_and_load(tmp_path, monkeypatch):
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers = list(root.handlers)

    first = segbench.train(TINY)
    # The CLI's own run directory: outputs/train/<date_time>_<model>, under the working directory.
    assert first.path.parent == tmp_path / "outputs" / "train" and first.path.name.endswith("_unet")
    assert first.finished and first.status["state"] == "finished"
    assert first.metrics == read_json(first.path / "metrics.json")
    # a user's own hydra.initialize() still works
    assert not GlobalHydra.instance().is_initialized()
    assert root.handlers == handlers  # the run's train.log handler is closed and gone
    logging.getLogger("segbench").warning("after the run")
    assert "after the run" not in (first.path / "train.log").read_text()

    second = segbench.train(TINY, optimizer="sgd",
                            **{"hydra.run.dir": "second", "trainer.max_epochs": 1})
    assert second.path == tmp_path / "second"
    assert second.config["optimizer"]["name"] == "sgd" and len(second.history) == 1
    assert second.metrics["test"]["dice"] != first.metrics["test"]["dice"]
    # History: numbers as numbers, one dict per epoch (pandas.DataFrame(run.history) works).
    assert [row["epoch"] for row in first.history] == [1, 2]
    assert isinstance(first.history[0]["val_iou"], float)
    assert max(r["val_iou"] for r in first.history) \
        == pytest.approx(first.metrics["val_best"]["iou"])

    again = segbench.evaluate(first.path)
    assert again["test"]["dice"] == pytest.approx(first.metrics["test"]["dice"], abs=1e-12)
    assert (first.path / "eval").is_dir()

    run = segbench.load_run(first.path)
    assert isinstance(run.model, torch.nn.Module) and not run.model.training
    assert run.config == first.config

    images = [np.full((40, 52, 3), 90, np.uint8), np.zeros((70, 64), np.uint8)]
    masks = segbench.predict(first.path, images)
    assert [m.shape for m in masks] == [(40, 52), (70, 64)] and masks[0].dtype == bool

    out = tmp_path / "masks"
    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2

    cv2.imwrite(str(folder / "a.png"), np.full((33, 45, 3), 120, np.uint8))
    written = segbench.predict(first.path, folder, out)
    assert written["predicted"] == 1 and (out / "a_mask.png").is_file()


@pytest.mark.slow
def test_a_run_prints_as_one_line_and_gives_its_per_case_table_and_probabilities(tiny_run):
    import pandas

    run = segbench.load_run(tiny_run)
    dice = run.metrics["test"]["dice"]
    assert repr(run) == f"Run('{tiny_run.resolve()}', finished, test dice {dice:.4f})"
    table = run.per_case
    assert isinstance(table, pandas.DataFrame) and len(table) == run.metrics["test"]["n_images"]
    assert table["dice"].mean() == pytest.approx(dice, abs=1e-5)
    images = [np.full((40, 52, 3), 90, np.uint8)]
    (prob,) = segbench.predict(tiny_run, images, probabilities=True)
    (mask,) = segbench.predict(tiny_run, images)
    assert prob.dtype == np.float32 and prob.shape == (40, 52)
    assert 0 <= prob.min() <= prob.max() <= 1
    assert np.array_equal(prob >= run.config["eval"]["threshold"], mask)


def test_per_case_without_pandas_is_rows(tiny_run, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("no pandas here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    rows = segbench.load_run(tiny_run).per_case
    assert isinstance(rows, list) and isinstance(rows[0]["dice"], float) and "image" in rows[0]


def test_errors_are_segbench_errors_not_system_exit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SegbenchError, match="model=nope: no such option in configs/model/"):
        segbench.train(TINY, model="nope")
    (tmp_path / "mine").mkdir()
    with pytest.raises(SegbenchError, match="model/nope"):  # Hydra's own error, as one line
        segbench.train([*TINY, f"hydra.searchpath=[file://{tmp_path / 'mine'}]"], model="nope")
    with pytest.raises(SegbenchError, match="trainer.max_epochs=0"):
        segbench.train([*TINY, "trainer.max_epochs=0"])
    with pytest.raises(SegbenchError, match="multirun=True"):
        segbench.train(["-m", "seed=0,1"])
    with pytest.raises(SegbenchError, match="no such directory"):
        segbench.load_run(tmp_path / "missing")
    with pytest.raises(SegbenchError, match="output folder"):
        segbench.predict(tmp_path, tmp_path)


def test_a_mistyped_key_from_python_is_a_segbench_error_with_the_closest_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SegbenchError, match="did you mean optimizer=adam"):
        segbench.train(["optimzer=adam"])
    assert not (tmp_path / "outputs").exists()


def test_keyword_overrides_are_written_as_hydra_reads_them():
    from segbench.api import overrides

    assert overrides(["a=1"], {"model": "unetpp", "trainer.grad_clip": None, "eval.tta": True,
                               "model.decoder_channels": [32, 16],
                               "dataset.root": "/data/x y"}) == [
        "a=1", "model=unetpp", "trainer.grad_clip=null", "eval.tta=true",
        "model.decoder_channels=[32,16]", "dataset.root='/data/x y'"]


@pytest.mark.e2e
def test_import_segbench_stays_light():
    code = ("import sys, segbench; heavy = [m for m in ('torch', 'hydra', 'omegaconf', 'mlflow') "
            "if m in sys.modules]; print(heavy, callable(segbench.train), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[] True False"
