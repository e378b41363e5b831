"""A fixed, deterministic tiny CPU run gives the history.csv and metrics.json recorded from the
training loop before it was reorganised (issue 17): a refactor of the engine must not change a
number. Gradient accumulation, a per-step schedule, seeded augmentation and early stopping (which
ends the run after epoch 3) are all on, so each step of the epoch is exercised.

If a deliberate change of behaviour moves these numbers, record them again from the changed code
(`SEGBENCH_RECORD_GOLDEN=1 pytest tests/test_golden_run.py -n 0 -s` prints them) and say why in
the commit."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from conftest import TINY, read_json, run_cli

pytestmark = pytest.mark.slow

ARGS = [*TINY, "trainer.max_epochs=4", "trainer.early_stopping.patience=1",
        "trainer.deterministic=true", "augmentation=basic", "scheduler=cosine",
        "trainer.accumulate_grad_batches=2", "eval.surface_metrics=true"]

# Wall-clock figures and the machine's description, which no two runs share.
UNTIMED = ("seconds", "wall_seconds", "train_seconds", "surface_seconds", "latency_ms",
           "versions", "device_name", "device_names")

GOLDEN_HISTORY = [{'epoch': 1.0,
  'lr': 0.001,
  'train_loss': 0.7105954885482788,
  'train_dice': 0.1480240636828222,
  'train_iou': 0.08383583331567535,
  'val_loss': 0.7324250221252442,
  'val_dice': 0.11347353694526503,
  'val_iou': 0.06194971565674682,
  'val_dice_micro': 0.1125,
  'val_iou_micro': 0.059602649006622516,
  'val_precision': 0.12554447625405737,
  'val_recall': 0.10769660743649008},
 {'epoch': 2.0,
  'lr': 0.001,
  'train_loss': 0.6257836222648621,
  'train_dice': 0.32664025636812644,
  'train_iou': 0.2110999835681774,
  'val_loss': 0.6904189586639404,
  'val_dice': 0.24099522099480444,
  'val_iou': 0.17045889886327076,
  'val_dice_micro': 0.30982658959537573,
  'val_iou_micro': 0.18331053351573187,
  'val_precision': 0.3375461193799989,
  'val_recall': 0.20488960787637436},
 {'epoch': 3.0,
  'lr': 0.0007502499999999999,
  'train_loss': 0.5822639465332031,
  'train_dice': 0.49427593087527866,
  'train_iou': 0.34391862344792945,
  'val_loss': 0.6723123550415039,
  'val_dice': 0.08341382527688744,
  'val_iou': 0.04643189232902114,
  'val_dice_micro': 0.09116809116809117,
  'val_iou_micro': 0.04776119402985075,
  'val_precision': 0.3475005167271976,
  'val_recall': 0.04819719005528957}]

GOLDEN_METRICS = {'test': {'n_images': 8,
          'dice': 0.32799381231671104,
          'iou': 0.21805056449340696,
          'precision': 0.4102335642683847,
          'recall': 0.2984399138229219,
          'specificity': 0.9690562101645978,
          'accuracy': 0.9169921875,
          'dice_micro': 0.4455768446799837,
          'iou_micro': 0.28665093102543926,
          'precision_micro': 0.5465,
          'recall_micro': 0.37611837577426016,
          'specificity_micro': 0.9696269506396089,
          'accuracy_micro': 0.9169921875,
          'empty_gt_images': 0,
          'auroc': 0.8606446156103348,
          'average_precision': 0.4246977993008237,
          'tp': 1093,
          'fp': 907,
          'fn': 1813,
          'tn': 28955,
          'hd95': 35.87970542471744,
          'assd': 10.403415497943907,
          'surface_nan_count': 0},
 'val_best': {'n_images': 5,
              'dice': 0.24099522099480444,
              'iou': 0.17045889886327076,
              'precision': 0.3375461193799989,
              'recall': 0.20488960787637436,
              'specificity': 0.9873405793829046,
              'accuracy': 0.912548828125,
              'dice_micro': 0.30982658959537573,
              'iou_micro': 0.18331053351573187,
              'precision_micro': 0.6340694006309149,
              'recall_micro': 0.20499745028046915,
              'specificity_micro': 0.9874723257195313,
              'accuracy_micro': 0.912548828125,
              'empty_gt_images': 0,
              'loss': 0.6904189586639404},
 'best_epoch': 2,
 # smoothing and best_from_epoch: settings added after this record; their defaults select as before
 'monitor': {'metric': 'val_iou', 'mode': 'max', 'best': 0.17045889886327076, 'smoothing': 0.0,
             'best_from_epoch': 1},
 'epochs_run': 3,
 'stopped_early': True,
 'threshold': 0.5,
 'tta': False,
 'empty_rule': 'dice = iou = 1 when prediction and ground truth are both empty',
 'native_resolution': False,
 'surface_metrics': True,
 'surface_unit': 'px',
 'pixel_spacing': None,
 'hd95_rule': 'max of the two directed 95th percentiles of surface distances',
 'assd_rule': 'mean of the surface distances in both directions pooled',
 'auroc_method': 'exact on probabilities truncated to multiples of 2^-20 (per-class histograms; '
                 'ties as scikit-learn)',
 'model': {'name': 'unet',
           'params': 765737,
           'trainable_params': 765737,
           'size_mb': 2.929,
           'flops': 242679808,
           'gflops': 0.243,
           'flops_input': [3, 64, 64]},
 'seed': 0,
 'split_sizes': {'train': 19, 'val': 5, 'test': 8},
 'device': 'cpu',
 'world_size': 1,
 'global_batch_size': 16,
 'precision': 'fp32'}

def untimed(doc):
    if isinstance(doc, dict):
        return {k: untimed(v) for k, v in doc.items() if k not in UNTIMED}
    if isinstance(doc, list):
        return [untimed(v) for v in doc]
    return doc


def numbers(row: dict) -> dict:
    return {k: float(v) for k, v in row.items()}


def assert_close(actual, expected, where="") -> None:
    """Equal structure, equal strings and integers, floats within a tight tolerance."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), f"{where}: keys differ"
        for k in expected:
            assert_close(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{where}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6), where
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("golden")
    # One thread: how a CPU kernel splits a reduction over threads moves the last bits of a sum,
    # and after three epochs a pixel at the threshold, so the numbers hold on any core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_cli("train", *ARGS, "hydra.run.dir=run", cwd=cwd)
    finally:
        torch.set_num_threads(threads)
    run = cwd / "run"
    with open(run / "history.csv", newline="") as f:
        history = [untimed(numbers(row)) for row in csv.DictReader(f)]
    metrics = untimed(read_json(run / "metrics.json"))
    if os.environ.get("SEGBENCH_RECORD_GOLDEN"):
        print("GOLDEN_HISTORY =", json.dumps(history, indent=1))
        print("GOLDEN_METRICS =", json.dumps(metrics, indent=1))
    return history, metrics


def test_history_is_the_recorded_one(golden_run):
    history, _ = golden_run
    assert [row["epoch"] for row in history] == [1.0, 2.0, 3.0]  # early stopping after epoch 3
    assert_close(history, GOLDEN_HISTORY, "history")


def test_metrics_are_the_recorded_ones(golden_run):
    _, metrics = golden_run
    assert metrics["stopped_early"] is True
    assert_close(metrics, GOLDEN_METRICS, "metrics")
