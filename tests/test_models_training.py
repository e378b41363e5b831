"""End to end: the new models train through the real CLI (tiny data, CPU) and their facts reach
metrics.json. Every model and preset was also run by hand at the README's settings."""

from __future__ import annotations

import pytest

from conftest import read_json, run_cli

TINY_DATA = ["dataset.num_train=24", "dataset.num_test=8", "dataset.image_size=64", "resolution=64",
             "trainer.max_epochs=1", "trainer.batch_size=8", "augmentation=none", "logger=none",
             "eval.latency=false"]


@pytest.mark.slow
@pytest.mark.parametrize("model", [
    ["model=mcnet", "model.preset=v5", "model.features=[8,16]", "activation=gelu"],
    ["model=deeplabv3plus", "model.encoder=resnet18", "model.encoder_depth=3",
     "model.decoder_channels=32"],
], ids=["mcnet-v5-gelu", "deeplabv3plus"])
def test_train_new_models_end_to_end(tmp_path, model):
    # One thread: on shared cores two spinning OpenMP threads made an epoch 10x slower.
    run_cli("train", *TINY_DATA, *model, "hydra.run.dir=run", cwd=tmp_path,
            env={"OMP_NUM_THREADS": "1"})
    metrics = read_json(tmp_path / "run" / "metrics.json")
    test = metrics["test"]
    assert 0 <= test["iou"] <= test["dice"] <= 1
    facts = metrics["model"]
    assert facts["name"] == model[0].split("=")[1]
    assert facts["params"] > 0 and facts["flops"] > 0 and facts["flops_input"] == [3, 64, 64]
    assert metrics["epochs_run"] == 1
