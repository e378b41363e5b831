"""Sweep and job directory names that a re-run of the same command finds again."""

from __future__ import annotations

from segbench import commands
from segbench.sweeps import MAX_NAME, job_dirname, prepare_sweep, safe_name


def _added(argv):
    out = prepare_sweep(argv)
    return {a.split("=", 1)[0]: a.split("=", 1)[1] for a in out if a not in argv}, out


def test_single_runs_are_left_alone():
    argv = ["optimizer=adam", "seed=1"]
    assert prepare_sweep(argv) == argv


def test_ad_hoc_sweep_dir_is_named_after_the_command_without_the_seed():
    added, out = _added(["-m", "optimizer=adam,sgd", "dataset.num_train=24", "seed=0,1"])
    assert added["hydra.sweep.dir"] == "'outputs/multirun/optimizer=adam,sgd,dataset.num_train=24'"
    # Constant overrides and the seed stay out of job names; what varies names the job.
    assert added["hydra.job.config.override_dirname.exclude_keys"] == \
        "[dataset.num_train,seed,trainer.resume]"
    # Inserted beside the user's overrides, so a trailing `--cfg job` style option still parses.
    assert out[:2] == ["-m", "hydra.job.config.override_dirname.exclude_keys=[dataset.num_train,seed,trainer.resume]"]
    # Same command, same place; a different seed list too (more seeds extend the same sweep).
    again, _ = _added(["-m", "dataset.num_train=24", "optimizer=adam,sgd", "seed=0,1,2"])
    assert again["hydra.sweep.dir"] == added["hydra.sweep.dir"]


def test_study_sweeps_live_under_outputs_studies():
    added, _ = _added(["-m", "experiment=study/optimizers", "seed=0,1,2"])
    assert added["hydra.sweep.dir"] == "'outputs/studies/optimizers/default'"
    other, _ = _added(["-m", "experiment=study/optimizers", "dataset=lgg_mri", "seed=0,1,2"])
    assert other["hydra.sweep.dir"] == "'outputs/studies/optimizers/dataset=lgg_mri'"
    assert "experiment" in other["hydra.job.config.override_dirname.exclude_keys"]


def test_a_users_own_sweep_dir_and_exclude_keys_win():
    argv = ["-m", "optimizer=adam,sgd", "hydra.sweep.dir=mine",
            "hydra.job.config.override_dirname.exclude_keys=[seed]"]
    assert prepare_sweep(argv) == argv


def test_job_dirnames_are_readable_safe_and_end_with_the_seed():
    assert job_dirname("optimizer=adam", 3) == "optimizer=adam/seed=3"
    assert job_dirname("+mcnet_version=v2|resolution='64'", 0) == "mcnet_version=v2,resolution=64/seed=0"
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
    from segbench.sweeps import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=ray_cluster"], return_hydra_config=True)
    assert cfg.hydra.launcher.ray.remote.num_gpus == (1 if torch.cuda.is_available() else 0)
