"""Several classes end to end: a folder of 0/1/2 label maps trains, tests, re-evaluates, reports
and predicts as a 3-class task, its per-class test Dice equal to MONAI's on the predicted label
maps; overlapping (multilabel) masks train too; binary runs keep their numbers
(tests/test_golden_run.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segbench
from conftest import TINY

pytestmark = pytest.mark.slow
SMALL = [o for o in TINY if not o.startswith(("dataset.", "resolution"))] + [
    "resolution.height=32", "resolution.width=32", "trainer.max_epochs=2"]


def shapes(rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An image with a bright disc (class 1) and a dark square (class 2), and its label map."""
    image = np.full((size, size, 3), 120, np.uint8)
    labels = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 8))]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image[disc], labels[disc] = 230, 1
    y, x = rng.integers(0, size - 8, 2)
    image[y:y + 7, x:x + 7], labels[y:y + 7, x:x + 7] = 20, 2
    return (image + rng.integers(0, 20, image.shape)).astype(np.uint8), labels


def write_folder(root: Path, n: int = 20, size: int = 40, multilabel: bool = False) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for i in range(n):
        image, labels = shapes(rng, size)
        Image.fromarray(image).save(root / "images" / f"c{i:02d}.png")
        if multilabel:  # class a: the disc; class b: the disc and the square (overlapping)
            for name, layer in (("a", labels == 1), ("b", labels > 0)):
                (root / "masks" / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(layer.astype(np.uint8) * 255).save(
                    root / "masks" / name / f"c{i:02d}.png")
        else:
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(labels).save(root / "masks" / f"c{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mc")
    root = write_folder(tmp / "data")
    run = segbench.train([*SMALL, "dataset=folder", f"dataset.root={root}",
                          "dataset.task=multiclass",
                          "dataset.classes={0: background, 1: disc, 2: square}",
                          f"hydra.run.dir={tmp / 'run'}"])
    return run, root


def test_three_classes_train_with_per_class_records(three_class_run):
    run, _ = three_class_run
    m = run.metrics
    assert m["task"]["task"] == "multiclass"
    assert m["task"]["classes"] == ["background", "disc", "square"]
    assert m["task"]["background"] == ["background"] and "class_rule" in m["task"]
    test = m["test"]
    for name in ("disc", "square"):
        assert 0 <= test[f"iou_{name}"] <= test[f"dice_{name}"] <= 1
    assert test["dice"] == pytest.approx((test["dice_disc"] + test["dice_square"]) / 2)
    assert m["monitor"]["metric"] == "val_dice"
    header = (Path(run.path) / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_dice_disc", "val_dice_square", "val_dice_background"} <= set(header)
    rows = list(csv.DictReader(open(Path(run.path) / "per_case.csv")))
    assert {"dice_disc", "dice_square", "hd95_disc"} <= set(rows[0])
    from segbench.inference.cases import load_cases
    from segbench.task import task_of

    cases = load_cases(Path(run.path) / "cases.npz")  # the galleries draw each class in colour
    assert task_of(cases.task).names == ("background", "disc", "square")
    shown = next(iter(cases.pred_labels))
    assert set(np.unique(cases.truth_labels[shown])) <= {0, 1, 2}
    assert cases.pred_labels[shown].shape == cases.predictions[shown].shape


def test_per_class_dice_equals_monai_on_the_predicted_label_maps(three_class_run):
    from monai.metrics import DiceMetric

    from segbench.data import build_datasets, select_splits
    from segbench.inference.loop import Collect, Subject, eval_loader, evaluate
    from segbench.models import load_trained
    from segbench.runs.rundir import RunDir

    run, _ = three_class_run
    rd = RunDir.open(run.path)
    model, _, cfg = load_trained(rd, "best", "cpu")
    splits = select_splits(cfg, rd.read_split()["splits"], ["test"])
    data = build_datasets(cfg, splits, Path(cfg.paths.cache), augment=False)["test"]
    cpu = torch.device("cpu")
    result = evaluate(Subject(model, cpu), eval_loader(data, 4, cpu),
                      collect=Collect(keep_predictions=True))
    pred = torch.from_numpy(np.stack(result.predictions)).long()
    truth = torch.from_numpy(np.asarray(data.masks)).long()
    onehot = lambda x: torch.nn.functional.one_hot(x, 3).permute(0, 3, 1, 2).float()  # noqa: E731
    monai = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(
        onehot(pred), onehot(truth)).numpy()
    for k, name in enumerate(["disc", "square"]):
        assert run.metrics["test"][f"dice_{name}"] == pytest.approx(monai[:, k].mean(), abs=1e-6)


def test_eval_reproduces_and_predict_writes_label_maps(three_class_run, tmp_path):
    run, root = three_class_run
    again = segbench.evaluate(run.path)
    for key in ("dice", "dice_disc", "dice_square", "iou_micro_square"):
        assert again["test"][key] == pytest.approx(run.metrics["test"][key], abs=1e-9)
    out = tmp_path / "masks"
    segbench.predict(run.path, root / "images", out)
    rows = list(csv.DictReader(open(out / "areas.csv")))
    assert {"pixels_background", "pixels_disc", "pixels_square"} <= set(rows[0])
    mask = Image.open(out / "c00_mask.png")
    assert mask.mode == "P" and mask.size == (40, 40)  # at the image's own size
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values <= {0, 1, 2}
    assert int(rows[0]["pixels_disc"]) == int((np.asarray(mask) == 1).sum())


def test_report_names_the_classes(three_class_run, tmp_path):
    from conftest import run_cli

    run, _ = three_class_run
    proc = run_cli("report", str(Path(run.path)), cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    tables = [p for p in Path(run.path).rglob("*.md")] + [p for p in tmp_path.rglob("*.md")]
    text = "\n".join(p.read_text() for p in tables)
    assert "dice_disc" in text and "dice_square" in text  # a column per foreground class
    assert "dice_background" not in text
    assert "### dice_square" in text  # compared with the same statistics as the summary


def test_overlapping_classes_train_as_multilabel(tmp_path):
    root = write_folder(tmp_path / "data", multilabel=True)
    run = segbench.train([*SMALL, "dataset=folder", f"dataset.root={root}",
                          "dataset.task=multilabel", "dataset.classes=[a,b]", "loss=bce_dice",
                          f"hydra.run.dir={tmp_path / 'run'}"])
    test = run.metrics["test"]
    assert run.metrics["task"]["task"] == "multilabel"
    assert {"dice_a", "dice_b"} <= set(test) and test["dice"] == pytest.approx(
        (test["dice_a"] + test["dice_b"]) / 2)
    meta = json.loads((Path(run.path) / "metrics.json").read_text())
    assert meta["model"]["name"] == "unet"


def test_a_loss_without_a_multiclass_form_is_one_line(tmp_path):
    root = write_folder(tmp_path / "data", n=8)
    with pytest.raises(segbench.SegbenchError, match="loss boundary has no multiclass form"):
        segbench.train([*SMALL, "dataset=folder", f"dataset.root={root}", "dataset.task=multiclass",
                        "dataset.classes={0: background, 1: disc, 2: square}", "loss=boundary",
                        f"hydra.run.dir={tmp_path / 'run'}"])


def test_binary_task_refuses_label_maps_and_model_classes(tmp_path):
    root = write_folder(tmp_path / "data", n=8)
    with pytest.raises(segbench.SegbenchError, match="dataset.task=multiclass dataset.classes="):
        segbench.train([*SMALL, "dataset=folder", f"dataset.root={root}",
                        f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(segbench.SegbenchError, match="model.classes=3, but dataset.task is binary"):
        segbench.train([*SMALL, "dataset=folder", f"dataset.root={root}", "model.classes=3",
                        f"hydra.run.dir={tmp_path / 'run2'}"])


def test_tta_ensemble_and_onnx_follow_the_task(three_class_run, tmp_path):
    from conftest import read_json, run_cli

    run, root = three_class_run
    tta = segbench.evaluate(run.path, ["eval.tta=true"])["test"]
    for name in ("disc", "square"):
        assert 0 <= tta[f"iou_{name}"] <= tta[f"dice_{name}"] <= 1
    # an ensemble of the run with a second seed: the members' softmax probabilities averaged
    second = segbench.train([*SMALL, "dataset=folder", f"dataset.root={root}", "seed=1",
                             "dataset.task=multiclass",
                             "dataset.classes={0: background, 1: disc, 2: square}",
                             f"hydra.run.dir={tmp_path / 'seed1'}"])
    proc = run_cli("ensemble", str(run.path), str(second.path), f"output={tmp_path / 'ens'}",
                   "eval.latency=false", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    ens = read_json(tmp_path / "ens" / "metrics.json")
    assert ens["task"]["classes"] == ["background", "disc", "square"]
    assert 0 <= ens["test"]["dice_square"] <= 1
    proc = run_cli("export", f"run_dir={run.path}", "format=onnx", cwd=tmp_path)
    info = read_json(next(Path(run.path).glob("export*/model.onnx.json")))
    assert info["output"]["shape"][1] == 3 and info["card"]["classes"] == 3
    assert info["card"]["task"]["task"] == "multiclass" and info["max_abs_diff"] <= 1e-4
