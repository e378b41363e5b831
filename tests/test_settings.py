"""Typed settings: a wrong type or value is a one-line error before anything runs, and a new run
directory records it as failed (never `running`)."""

from __future__ import annotations

import pytest

from conftest import TINY, read_json, run_cli
from datasets_util import compose_cfg
from segbench import SegbenchError
from segbench.settings import check_threshold, check_train


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=abc", "trainer.max_epochs=abc: expected an integer"),
    ("trainer.batch_size=-1", "trainer.batch_size=-1: use an integer >= 1"),
    ("seed=abc", "seed=abc: expected an integer"),
    ("optimizer.lr=abc", "optimizer.lr=abc: expected a number"),
    ("optimizer.lr=0", "optimizer.lr=0: use a learning rate > 0"),
    ("trainer.precision=fp8", "trainer.precision=fp8: expected auto | fp32 | bf16 | fp16"),
    ("eval.threshold=2", "eval.threshold=2: use a probability in [0, 1]"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction=1.5: use a fraction in (0, 1)"),
    ("dataset.normalisation=3", "dataset.normalisation=3: expected fixed | per_image"),
    ("trainer.data_on_device_budget=2", "trainer.data_on_device_budget=2: use a fraction of the "
                                        "device's memory in (0, 1], e.g. 0.25"),
    ("trainer.data_on_device=gpu", "trainer.data_on_device=gpu: expected auto"),
])
def test_a_bad_setting_is_one_line_and_leaves_a_failed_status(tmp_path, override, message):
    proc = run_cli("train", *TINY, override, "hydra.run.dir=run", cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and message in out, out[-2000:]
    assert "Traceback" not in out
    status = read_json(tmp_path / "run" / "status.json")
    assert status["state"] == "failed" and message in status["error"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_settings_are_typed_from_the_yaml():
    s = check_train(compose_cfg("trainer.max_epochs=7", "trainer.grad_clip=1",
                                "trainer.num_workers=2"))
    assert (s.trainer.max_epochs, s.trainer.grad_clip, s.trainer.num_workers) == (7, 1.0, 2)
    assert isinstance(s.trainer.grad_clip, float) and s.trainer.early_stopping.patience >= 1
    assert s.trainer.num_workers == 2 and check_train(compose_cfg()).trainer.num_workers == "auto"


def test_an_unknown_trainer_key_names_the_settings():
    with pytest.raises(SegbenchError, match="trainer.max_epoch is not a setting of trainer; "
                                            "its settings: device"):
        check_train(compose_cfg("+trainer.max_epoch=3"))


@pytest.mark.parametrize("bad", [-0.1, 1.5, None, "abc", True])
def test_one_threshold_rule_for_every_command(bad):
    with pytest.raises(SegbenchError, match=r"a probability in \[0, 1\]"):
        check_threshold(bad)
    assert check_threshold(0) == 0.0 and check_threshold(1) == 1.0 and check_threshold("0.3") == 0.3
