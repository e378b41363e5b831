"""A run directory is data, not code; nothing overwritten, nothing silently reused.

A received run directory (a colleague's model, a paper's supplement) must not run code when it
is opened; two commands must never write the same output folder; a sweep re-run must not keep
results of another configuration or other data, nor exit 0 when a job failed."""

from __future__ import annotations

import json
import shutil
import threading
import time

import cv2
import numpy as np
import pytest
import yaml
from faultkit import read_json

import segbench
from conftest import TINY, run_cli
from segbench import SegbenchError
from segbench.atomic import fresh_dir
from segbench.runs.rundir import MAX_YAML_BYTES, load_yaml

pytestmark = pytest.mark.slow

BOMB = "\n".join(['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)])


def _hostile_copy(tiny_run, tmp_path, model: dict, name: str = "received"):
    run = tmp_path / name
    shutil.copytree(tiny_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"] = model
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def _image(folder):
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((64, 64, 3), 90, np.uint8))
    return folder


def test_opening_a_run_that_names_an_import_path_runs_nothing(tiny_run, tmp_path):
    marker = tmp_path / "marker"
    run = _hostile_copy(tiny_run, tmp_path, {"name": "x", "_target_": "subprocess.run",
                                             "args": ["touch", str(marker)]})
    images = _image(tmp_path / "images")
    commands = [("eval", f"run_dir={run}"), ("export", f"run_dir={run}"),
                ("predict", f"run_dir={run}", f"input={images}", f"output={tmp_path / 'out'}"),
                ("ensemble", str(_hostile_copy(tiny_run, tmp_path, {  # same preprocessing
                    "name": "x", "_target_": "subprocess.run", "in_channels": 3}, "member")),
                 str(tiny_run), f"output={tmp_path / 'ens'}")]
    for command, *args in commands:
        proc = run_cli(command, *args, cwd=tmp_path, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 2, (command, text[-2000:])
        assert "model._target_=subprocess.run is an import path" in text, (command, text[-2000:])
        assert "SEGBENCH_TRUSTED_MODULES=subprocess" in text and "Traceback" not in text
    with pytest.raises(SegbenchError, match="is an import path"):  # the Python API too
        segbench.predict(run, [np.zeros((64, 64, 3), np.uint8)])
    assert not marker.exists()


def test_an_allowed_module_must_still_build_a_network(tiny_run, tmp_path):
    run = _hostile_copy(tiny_run, tmp_path, {"name": "x", "_target_": "collections.OrderedDict"})
    refused = run_cli("export", f"run_dir={run}", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "SEGBENCH_TRUSTED_MODULES" in refused.stdout
    allowed = run_cli("export", f"run_dir={run}", cwd=tmp_path, check=False,
                      env={"SEGBENCH_TRUSTED_MODULES": "collections"})
    assert allowed.returncode == 2
    assert "built a OrderedDict, not a torch nn.Module" in allowed.stdout


def test_a_resume_replays_no_hydra_keys_and_no_import_paths(tiny_run, tmp_path):
    marker = tmp_path / "marker"
    run = tmp_path / "received"
    shutil.copytree(tiny_run, run)
    overrides = run / ".hydra" / "overrides.yaml"
    lines = yaml.safe_load(overrides.read_text())
    overrides.write_text(yaml.safe_dump([*lines, "+hydra.callbacks.evil._target_=subprocess.run",
                                         f"+hydra.callbacks.evil.args=[touch,{marker}]"]))
    proc = run_cli("train", f"trainer.resume={run}", cwd=tmp_path, check=False)
    assert proc.returncode == 0 and "skipping" in proc.stdout, proc.stdout[-2000:]
    assert not marker.exists()
    overrides.write_text(yaml.safe_dump([*lines, "model._target_=subprocess.run"]))
    refused = run_cli("train", f"trainer.resume={run}", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "names an import path" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr


def test_yaml_aliases_and_oversized_configs_are_refused_before_parsing(tiny_run, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(SegbenchError, match="anchors or aliases"):
        load_yaml(bomb)
    assert time.monotonic() - started < 2
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (MAX_YAML_BYTES + 1))
    with pytest.raises(SegbenchError, match="over the 1 MiB"):
        load_yaml(big)
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_run, sweep / "bomb")
    (sweep / "bomb" / "config.yaml").write_text(BOMB)
    started = time.monotonic()
    report = run_cli("report", str(sweep), cwd=tmp_path, check=False)  # the old code hung here
    assert time.monotonic() - started < 60 and "Traceback" not in report.stderr
    proc = run_cli("eval", f"run_dir={sweep / 'bomb'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "anchors or aliases" in proc.stdout


def test_output_folders_are_created_exclusively(tmp_path):
    made: list = []
    threads = [threading.Thread(target=lambda: made.append(fresh_dir(tmp_path / "eval" / "t")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and {p.name for p in made} == {"t", *(f"t-{n}" for n in range(2, 9))}


def test_two_evals_of_one_run_in_the_same_second_keep_both_results(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for _ in range(2):  # one folder name for both, as two evals started in the same second get
        run_cli("eval", f"run_dir={run}", f"hydra.run.dir={run}/eval/same", cwd=tmp_path)
    assert (run / "eval" / "same" / "metrics.json").is_file()
    assert (run / "eval" / "same-2" / "metrics.json").is_file()
    run_cli("export", f"run_dir={run}", cwd=tmp_path)
    run_cli("export", f"run_dir={run}", cwd=tmp_path)
    assert (run / "export" / "model.onnx").is_file() and (run / "export-2" / "model.onnx").is_file()


def test_predict_refuses_an_output_folder_holding_files(tiny_run, tmp_path):
    images = _image(tmp_path / "images")
    out = tmp_path / "out"
    out.mkdir()
    (out / "other_mask.png").write_bytes(b"another run's mask")
    proc = run_cli("predict", f"run_dir={tiny_run}", f"input={images}", f"output={out}",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "holds files already" in proc.stderr and "overwrite=true" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["other_mask.png"]
    run_cli("predict", f"run_dir={tiny_run}", f"input={images}", f"output={out}", "overwrite=true",
            cwd=tmp_path)
    assert (out / "a_mask.png").is_file()


def test_a_sweep_with_a_failed_job_exits_non_zero_naming_it(tmp_path):
    proc = run_cli("train", "-m", *(a for a in TINY if not a.startswith("trainer.batch_size")),
                   "trainer.max_epochs=1", "trainer.batch_size=0,8", "hydra.sweep.dir=sweep",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 of 2 job(s) of this sweep failed" in proc.stdout
    assert "trainer.batch_size=0" in proc.stdout


def test_a_finished_run_is_skipped_only_for_its_own_config_and_data(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = [*TINY, "trainer.resume=true", f"hydra.run.dir={run}"]
    other = run_cli("train", *args, "optimizer.lr=0.5", cwd=tmp_path, check=False)
    assert other.returncode == 2 and "finished with another config" in other.stdout, \
        other.stdout[-2000:]
    assert "hydra.sweep.dir=<new folder>" in other.stdout
    split = read_json(run / "split.json")
    first = next(iter(split["files"]))
    split["files"][first][1] += 1  # the data it recorded is not the data there now
    (run / "split.json").write_text(json.dumps(split))
    changed = run_cli("train", *args, cwd=tmp_path, check=False)
    assert changed.returncode == 2 and "1 file(s) changed" in changed.stdout
    assert "re-run in a new folder" in changed.stdout
    shutil.copy(tiny_run / "split.json", run / "split.json")
    same = run_cli("train", *args, cwd=tmp_path)
    assert "skipping" in same.stdout
    assert read_json(run / "metrics.json") == read_json(tiny_run / "metrics.json")
