"""The CLI parses the documented forms and fails clearly on bad input."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import yaml

from conftest import TINY, run_cli


def test_no_command_prints_usage_and_fails(tmp_path):
    proc = run_cli(cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "commands:" in proc.stdout and "train" in proc.stdout and "eval" in proc.stdout


def test_unknown_command_lists_commands(tmp_path):
    proc = run_cli("trian", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "unknown command 'trian'; did you mean train?" in proc.stderr
    assert "train" in proc.stderr and "eval" in proc.stderr


def test_cfg_job_composes_overrides_as_written(tmp_path):
    proc = run_cli("train", "model=unetpp", "optimizer=radam", "resolution=576x720", "--cfg", "job",
                   cwd=tmp_path)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["name"] == "unetpp" and cfg["model"]["arch"] == "UnetPlusPlus"
    assert cfg["optimizer"]["name"] == "radam"
    assert (cfg["resolution"]["height"], cfg["resolution"]["width"]) == (576, 720)
    assert not (tmp_path / "outputs").exists()  # --cfg only prints


def test_help_lists_config_groups(tmp_path):
    proc = run_cli("train", "--help", cwd=tmp_path)
    assert "segbench train" in proc.stdout
    for group in ("model", "optimizer", "scheduler", "loss", "augmentation", "resolution",
                  "dataset"):
        assert f"{group}:" in proc.stdout


def test_unknown_option_names_the_available_ones(tmp_path):
    proc = run_cli("train", "model=unet3000", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "segbench train: error: model=unet3000: no such option in configs/model/; did you mean "
        "model=unet? choose one of "
        "classic_unet, deeplabv3plus, fpn, mcnet, smp, unet, unetpp (or add your own: "
        "docs/extending.md)"]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("command, args, line", [
    ("train", ["optimzer=adam"], "optimzer=adam: segbench train has no setting 'optimzer'; did you "
     "mean optimizer=adam?"),
    ("train", ["seed=1", "trainr.max_epochs=1"], "did you mean trainer.max_epochs=1?"),
    ("train", ["model=unet++"], "model=unet++: no such option in configs/model/; did you mean "
     "model=unetpp?"),
    ("predict", ["run_dir=.", "input=.", "output=o", "batchsize=2"], "did you mean batch_size=2?"),
    # eval's key for a moved dataset is data_root: the advice is the command that works
    ("eval", ["run_dir=.", "dataset.root=elsewhere"], "did you mean data_root=elsewhere?"),
])
def test_an_unknown_key_or_option_suggests_the_closest_one(tmp_path, command, args, line):
    proc = run_cli(command, *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and line in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert "+optimzer" not in proc.stderr and not (tmp_path / "outputs").exists()


def test_a_job_folder_with_equals_signs_is_a_path_not_an_unknown_key(tiny_run, tmp_path):
    job = tmp_path / "optimizer=adam" / "seed=0"
    shutil.copytree(tiny_run, job)
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), np.full((40, 50, 3), 90, np.uint8))
    run_cli("predict", "optimizer=adam/seed=0", f"input={frame}", "output=masks", cwd=tmp_path)
    assert (tmp_path / "masks" / "frame_mask.png").is_file()


def test_an_unknown_encoder_lists_the_closest_few_at_once(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    for _ in range(2):  # the first asks smp (and keeps the names), the second reads them
        start = time.perf_counter()
        proc = run_cli("train", "-m", "model.encoder=resnet18,resnet1", cwd=tmp_path, check=False)
        seconds = time.perf_counter() - start
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "model.encoder=resnet1: not an smp encoder; closest: resnet18, resnet152" in proc.stderr
    assert "mit_b0" not in proc.stderr and "vgg" not in proc.stderr  # not all ninety
    assert seconds < 1.0 and not (tmp_path / "outputs").exists()


def test_the_model_factory_names_close_encoders_too():
    from segbench import SegbenchError
    from segbench.models import create_model

    with pytest.raises(SegbenchError, match="model.encoder=resnt34: not an smp encoder; closest: "
                                            "resnet34"):
        create_model("unet", encoder="resnt34", in_channels=1, classes=1)


@pytest.mark.parametrize("args, named", [
    (["-m", "optimizer=adam,adamw3"], "optimizer=adamw3"),  # one value of a sweep
    (["logger=[tensorboard,mlfow]"], "logger=mlfow"),  # one of several loggers
    (["experiment=study/optimizer"], "study/optimizers"),  # nested options are listed
    (["+loss=dise"], "loss=dise"),
])
def test_every_unknown_group_value_is_refused_before_composing(tmp_path, args, named):
    proc = run_cli("train", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and named in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_an_unknown_resolution_says_how_to_set_any_size(tmp_path):
    proc = run_cli("train", "resolution=100", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "choose one of 64, 128, 256, 512, 576x720; for another size set resolution.height=100 " \
        "resolution.width=100" in proc.stderr
    cfg = yaml.safe_load(run_cli("train", "resolution.height=100", "resolution.width=100",
                                 "--cfg", "job", cwd=tmp_path).stdout)
    assert cfg["resolution"] == {"height": 100, "width": 100}


def test_sweep_functions_and_known_values_pass_the_check():
    from segbench.cli_args import check_group_choices

    check_group_choices(["model=unet", "resolution=64,128", "resolution='256'", "logger=[csv,none]",
                         "model=choice(unet,fpn)", "~logger", "hydra/launcher=submitit_local",
                         "experiment=study/optimizers", "model.encoder=resnet18"])
    # a user's config folder may add options: Hydra checks those
    check_group_choices(["hydra.searchpath=[file://mine]", "model=tiny"])


def test_quickstart_composes_64px_small_unet(tmp_path):
    cfg = yaml.safe_load(run_cli("train", "experiment=quickstart", "--cfg", "job",
                                 cwd=tmp_path).stdout)
    assert cfg["resolution"] == {"height": 64, "width": 64}
    assert cfg["dataset"]["name"] == "synthetic"
    assert len(cfg["model"]["decoder_channels"]) == cfg["model"]["encoder_depth"]


@pytest.mark.slow
def test_resolution_a_model_cannot_take_is_named_with_valid_sizes(tmp_path):
    proc = run_cli("train", *TINY, "resolution=576x720", "model.pad_to_multiple=false",
                   "model.encoder_depth=5", "model.decoder_channels=[64,32,16,8,8]",
                   "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "needs height and width divisible by 32; 576x720 is not" in out
    assert "Nearest valid heights [576], widths [704, 736]" in out
    assert not (tmp_path / "run" / "split.json").exists()  # rejected before any data was read
    proc = run_cli("train", *TINY, "resolution.height=60", "resolution.width=70",
                   "model.pad_to_multiple=false", "hydra.run.dir=run2", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "Nearest valid heights [56, 64], widths [64, 72]" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_decoder_channels_must_match_depth(tmp_path):
    proc = run_cli("train", *TINY, "model.encoder_depth=4", "hydra.run.dir=run", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert "model.decoder_channels has 3 entries but model.encoder_depth=4" \
        in proc.stdout + proc.stderr


def test_eval_errors_are_clear(tmp_path):
    proc = run_cli("eval", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "missing run_dir" in proc.stderr
    (tmp_path / "notarun").mkdir()
    proc = run_cli("eval", "run_dir=notarun", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "not a segbench run directory" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_resume_from_a_folder_that_is_not_a_run(tmp_path):
    proc = run_cli("train", "trainer.resume=nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "not a segbench run directory" in proc.stderr


def test_multirun_with_cfg_is_a_clear_error(tmp_path):
    proc = run_cli("train", "-m", "optimizer=adam,sgd", "--cfg", "job", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "cannot be combined with -m" in proc.stderr and "Traceback" not in proc.stderr


def test_mcnet_version_is_a_group_without_plus(tmp_path):
    cfg = yaml.safe_load(run_cli("train", "mcnet_version=v2", "--cfg", "job", cwd=tmp_path).stdout)
    assert cfg["model"]["name"] == "mcnet" and cfg["model"]["preset"] == "v1"
    assert cfg["augmentation"]["name"] == "basic"
