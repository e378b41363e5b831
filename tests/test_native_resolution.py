"""eval.native_resolution: test metrics against the masks at their size on disk."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import TINY, read_json, run_cli
from segbench.data.dataset import NativeMaskDataset
from segbench.inference.cases import load_cases
from segbench.inference.loop import Collect, Subject, eval_loader, evaluate


class Constant(torch.nn.Module):
    """Logits +10 on the left half of the image, -10 on the right."""

    def forward(self, x):
        out = torch.full((x.shape[0], 1, *x.shape[-2:]), -10.0)
        out[..., : x.shape[-1] // 2] = 10.0
        return out


def test_probabilities_are_resized_to_each_native_mask():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    masks = [np.zeros((16, 20), np.uint8), np.zeros((24, 24), np.uint8)]
    masks[0][:, :10] = 1  # exactly the left half at 16x20
    masks[1][:, :6] = 1   # a quarter of a 24x24 mask
    data = NativeMaskDataset(images, masks, ["a", "b"])
    cpu = torch.device("cpu")
    result = evaluate(Subject(Constant(), cpu), eval_loader(data, 1, cpu),
                      collect=Collect(keep=(0, 1), keep_predictions=True))
    assert result.counts.tolist() == [[160, 0, 0, 160], [144, 144, 0, 288]]
    assert [p.shape for p in result.predictions] == [(16, 20), (24, 24)]
    assert result.kept[0].shape == (8, 8)  # drawings stay at the model's resolution


@pytest.mark.slow
def test_a_low_resolution_run_is_scored_on_the_native_masks(tmp_path):
    # Synthetic frames are generated at 64x64; the model trains at 32x32.
    run_cli("train", *TINY, "resolution.height=32", "resolution.width=32", "trainer.max_epochs=1",
            "eval.native_resolution=true", "hydra.run.dir=run", cwd=tmp_path)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["native_resolution"] is True
    test = metrics["test"]
    assert test["tp"] + test["fp"] + test["fn"] + test["tn"] == 8 * 64 * 64
    with open(tmp_path / "run" / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(int(r["tp"]) + int(r["fp"]) + int(r["fn"]) + int(r["tn"]) == 64 * 64 for r in rows)
    assert all(float(r["iou"]) <= float(r["dice"]) for r in rows)
    # the report's galleries draw each case at the size it was scored at
    cases = load_cases(tmp_path / "run" / "cases.npz")
    assert {p.shape for p in cases.predictions} == {(64, 64)}
    assert {i.shape for i in cases.images.values()} == {(32, 32, 3)}

    # eval reproduces it, and scoring at the training resolution instead gives 32x32 counts.
    run_cli("eval", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    out = sorted((tmp_path / "run" / "eval").iterdir())[-1]
    assert read_json(out / "metrics.json")["test"]["dice"] == test["dice"]
    assert "matches the" in (out / "eval.log").read_text()
    run_cli("eval", f"run_dir={tmp_path / 'run'}", "eval.native_resolution=false", cwd=tmp_path)
    out = sorted((tmp_path / "run" / "eval").iterdir())[-1]
    low = read_json(out / "metrics.json")
    assert low["native_resolution"] is False
    low_test = low["test"]
    assert low_test["tp"] + low_test["fp"] + low_test["fn"] + low_test["tn"] == 8 * 32 * 32
