"""A researcher's way through a study (issue 22): the paths a run records work from any folder,
and a refused command leaves nothing behind."""

from __future__ import annotations

import shutil

import yaml

from conftest import TINY, run_cli
from datasets_util import folder_dataset


def test_a_relative_dataset_root_is_recorded_absolute_and_eval_works_from_elsewhere(tmp_path):
    study = tmp_path / "study"
    folder_dataset(study / "data", n=12, size=40)
    tiny = [a for a in TINY if not a.startswith(("dataset.num_", "dataset.image_size"))]
    run_cli("train", *tiny, "dataset=folder", "dataset.root=data", "trainer.max_epochs=1",
            "hydra.run.dir=runs/r1", cwd=study)
    run = study / "runs" / "r1"
    recorded = yaml.safe_load((run / "config.yaml").read_text())["dataset"]["root"]
    assert recorded == str(study / "data")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_cli("eval", f"run_dir={run}", cwd=elsewhere)  # the recorded root holds from any folder
    assert len(list((run / "eval").iterdir())) == 1

    # The data moved: the refusal's advice is a key eval has, and no eval/<time>/ is left.
    shutil.move(study / "data", tmp_path / "moved")
    shutil.rmtree(run / "eval")
    refused = run_cli("eval", f"run_dir={run}", cwd=elsewhere, check=False)
    assert refused.returncode == 2 and "data_root=<the folder>" in refused.stdout + refused.stderr
    assert not (run / "eval").exists()
    run_cli("eval", f"run_dir={run}", f"data_root={tmp_path / 'moved'}", cwd=elsewhere)
    assert len(list((run / "eval").iterdir())) == 1
