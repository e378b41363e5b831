"""The real CLI in new processes: what only a process shows (argv, exit codes, output streams,
start-up imports, a closed pipe, shell completion). Marked e2e: `python -m pytest -m e2e`.

The other e2e tests live beside the behaviour they check: a killed and resumed run
(test_training), a killed and resumed sweep (test_study_sweep), offline pretrained weights
(test_pretrained_weights)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import TINY, read_json, run_dirs, run_subprocess

pytestmark = pytest.mark.e2e


def test_no_command_prints_usage_and_exits_2(tmp_path):
    proc = run_subprocess(cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "usage: segbench <command>" in proc.stdout


def test_the_console_script_has_a_version(tmp_path):
    exe = shutil.which("segbench")
    if exe is None:
        pytest.skip("the segbench console script is not on PATH (pip install -e . installs it)")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, cwd=tmp_path)
    from segbench import __version__

    assert proc.returncode == 0 and proc.stdout.strip() == f"segbench {__version__}"


def test_help_and_argument_errors_import_no_heavy_library(tmp_path):
    # `--help` and a refused command answer before torch, smp or albumentations load.
    code = ("import sys\nfrom segbench.cli import main\n"
            "for argv in (['train', '--help'], ['--help'], ['eval', 'run_dir=nowhere']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'segmentation_models_pytorch', 'albumentations', 'cv2')"
            " if m in sys.modules]\nprint('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_importing_the_data_pipeline_opens_no_network_connection(tmp_path):
    # albumentations asks PyPI for updates on import unless NO_ALBUMENTATIONS_UPDATE is set;
    # segbench sets it, so an offline node neither waits nor warns.
    code = ("import socket\n"
            "def refuse(*a, **k):\n    raise SystemExit('NETWORK ' + repr(a[1:]))\n"
            "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
            "import segbench.data.transforms\nprint('IMPORTED')\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "IMPORTED" in proc.stdout, \
        proc.stdout[-2000:] + proc.stderr[-2000:]


def test_help_into_a_closed_pipe_is_quiet(tmp_path):
    proc = subprocess.run(f"{sys.executable} -m segbench train --help | head -1", shell=True,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.startswith("segbench train")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_subprocess("train", "model=unetpp", "optimizer=radam", "resolution=128", "--cfg",
                          "job", cwd=tmp_path)
    cfg = yaml.safe_load(proc.stdout)
    assert (cfg["model"]["name"], cfg["optimizer"]["name"], cfg["resolution"]["height"]) == \
        ("unetpp", "radam", 128)
    assert not (tmp_path / "outputs").exists()  # printing a config runs nothing


def test_a_refused_setting_is_one_line_on_the_console_and_exit_2(tmp_path):
    proc = run_subprocess("train", "trainer.max_epochs=abc", "hydra.run.dir=run", cwd=tmp_path,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "trainer.max_epochs=abc: expected an integer" in out and "Traceback" not in out
    assert read_json(tmp_path / "run" / "status.json")["state"] == "failed"


def test_eval_of_a_mistyped_run_dir_fails_and_creates_nothing(tmp_path):
    proc = run_subprocess("eval", "run_dir=typo", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "run_dir=typo: no such file or directory" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_multirun_makes_one_complete_run_dir_per_job(tmp_path):
    run_subprocess("train", "-m", "optimizer=adam,sgd", *TINY, "trainer.max_epochs=1",
                   "hydra.sweep.dir=sweep", cwd=tmp_path)
    runs = run_dirs(tmp_path / "sweep")
    assert [r.relative_to(tmp_path / "sweep").as_posix() for r in runs] == [
        "optimizer=adam/seed=0", "optimizer=sgd/seed=0"]
    for run in runs:
        assert read_json(run / "status.json")["state"] == "finished"
        assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.pt").is_file()


def test_bash_completion_completes_commands_and_overrides(tmp_path):
    exe = shutil.which("segbench")
    if exe is None or shutil.which("bash") is None:
        pytest.skip("needs bash and the segbench console script on PATH")
    script = subprocess.run([exe, "--shell-completion", "install=bash"], capture_output=True,
                            text=True, check=True).stdout
    (tmp_path / "complete.sh").write_text(script)
    probe = ('source complete.sh\n'
             't(){ COMP_LINE="$1"; COMP_POINT=${#1}; _segbench_completion; '
             'echo "${COMPREPLY[*]}"; }\n'
             't "segbench tr"\nt "segbench train model=unet"\n')
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ,
                               "PATH": f"{os.path.dirname(exe)}:{os.environ['PATH']}"})
    commands, models = proc.stdout.splitlines()[:2]
    assert commands == "train"
    assert set(models.split()) == {"model=unet", "model=unetpp"}
