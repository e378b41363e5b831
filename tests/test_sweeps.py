"""Sweep and job directory names that a re-run of the same command finds again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from segbench import commands
from segbench.runs.sweeps import MAX_NAME, job_dirname, prepare_sweep, safe_name

TODAY = time.strftime("%Y-%m-%d")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # prepare_sweep makes the sweep folder and its sweep.json


def _added(argv):
    out = prepare_sweep(argv)
    return {a.split("=", 1)[0]: a.split("=", 1)[1] for a in out if a not in argv}, out


def test_single_runs_are_left_alone():
    argv = ["optimizer=adam", "seed=1"]
    assert prepare_sweep(argv) == argv


def test_ad_hoc_sweep_dir_is_named_after_what_it_sweeps_and_the_day():
    added, out = _added(["-m", "optimizer=adam,sgd", "dataset.num_train=24", "seed=0,1"])
    assert added["hydra.sweep.dir"] == f"'outputs/multirun/optimizer_{TODAY}'"
    record = json.loads(Path(f"outputs/multirun/optimizer_{TODAY}/sweep.json").read_text())
    assert record["command"] == "segbench train -m optimizer=adam,sgd dataset.num_train=24 seed=0,1"
    # Constant overrides and the seed stay out of job names; what varies names the job.
    assert added["hydra.job.config.override_dirname.exclude_keys"] == \
        "[dataset.num_train,seed,trainer.resume]"
    # Inserted beside the user's overrides, so a trailing `--cfg job` style option still parses.
    assert out[:2] == ["-m", "hydra.job.config.override_dirname.exclude_keys="
                             "[dataset.num_train,seed,trainer.resume]"]
    # Same command, same place; a different seed list too (more seeds extend the same sweep).
    again, _ = _added(["-m", "dataset.num_train=24", "optimizer=adam,sgd", "seed=0,1,2"])
    assert again["hydra.sweep.dir"] == added["hydra.sweep.dir"]


def test_study_sweeps_live_under_outputs_studies():
    added, _ = _added(["-m", "experiment=study/optimizers", "seed=0,1,2"])
    assert added["hydra.sweep.dir"] == f"'outputs/studies/optimizers_{TODAY}'"
    # Another command of the same study the same day: its own folder, still readable.
    other, _ = _added(["-m", "experiment=study/optimizers", "dataset=lgg_mri",
                       "dataset.image_size=64", "augmentation=none", "seed=0,1,2"])
    assert other["hydra.sweep.dir"] == f"'outputs/studies/optimizers_{TODAY}_2'"
    assert "experiment" in other["hydra.job.config.override_dirname.exclude_keys"]
    search, _ = _added(["-m", "hparams_search=lr_adam", "hydra.sweeper.n_trials=3"])
    assert search["hydra.sweep.dir"] == f"'outputs/multirun/search_lr_adam_{TODAY}'"


def test_the_same_command_finds_its_sweep_on_another_day_and_old_names_still_resume():
    added, _ = _added(["-m", "experiment=study/losses", "seed=0,1"])
    Path(added["hydra.sweep.dir"].strip("'")).rename("outputs/studies/losses_2020-01-31")
    again, _ = _added(["-m", "seed=0,1,2", "experiment=study/losses"])  # more seeds: same sweep
    assert again["hydra.sweep.dir"] == "'outputs/studies/losses_2020-01-31'"
    # A sweep begun under the old command-named folder is resumed there.
    Path("outputs/studies/activations/default").mkdir(parents=True)
    old, _ = _added(["-m", "experiment=study/activations", "seed=0,1"])
    assert old["hydra.sweep.dir"] == "'outputs/studies/activations/default'"
    # Printing the config makes no folder.
    prepare_sweep(["-m", "experiment=study/resolution", "--cfg", "job"])
    assert not list(Path("outputs/studies").glob("resolution*"))


def test_a_users_own_sweep_dir_and_exclude_keys_win():
    argv = ["-m", "optimizer=adam,sgd", "hydra.sweep.dir=mine",
            "hydra.job.config.override_dirname.exclude_keys=[seed]"]
    assert prepare_sweep(argv) == argv


def test_job_dirnames_are_readable_safe_and_end_with_the_seed():
    assert job_dirname("optimizer=adam", 3) == "optimizer=adam/seed=3"
    assert job_dirname("+mcnet_version=v2|resolution='64'", 0) \
        == "mcnet_version=v2,resolution=64/seed=0"
    assert job_dirname("", 1) == "default/seed=1"  # a seeds-only sweep
    assert job_dirname("dataset.root=/data/x y", 0) == "dataset.root=-data-x_y/seed=0"
    long = safe_name("model.decoder_channels=" + "1" * 300)
    assert len(long) == MAX_NAME and "/" not in long
    assert safe_name("a" * 300) != safe_name("a" * 299 + "b")  # the hash keeps them apart


def test_paths_with_equals_and_commas_are_quoted_for_hydra(tmp_path):
    run = tmp_path / "optimizer=adam,sgd" / "seed=0"
    run.mkdir(parents=True)
    report = commands.load("report").prepare([str(run.parent), "report.baseline=optimizer=adam"])
    assert report == [f"dir='{run.parent}'", "report.baseline='optimizer=adam'"]
    predict = commands.load("predict").prepare([f"run_dir={run}", "input=a b", "output=o'k"])
    assert predict == [f"run_dir='{run}'", "input='a b'", "output='o\\'k'"]
    assert commands.load("eval").prepare([str(run)]) == [f"run_dir='{run}'"]


def test_a_ray_job_asks_for_a_gpu_only_where_there_is_one():
    import torch
    from hydra import compose, initialize_config_dir

    from segbench import config_dir
    from segbench.runs.sweeps import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=ray_cluster"], return_hydra_config=True)
    assert cfg.hydra.launcher.ray.remote.num_gpus == (1 if torch.cuda.is_available() else 0)
