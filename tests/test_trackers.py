"""Experiment trackers: MLflow's local store read back through MLflow's own client, W&B offline
(files written, nothing sent), TensorBoard hparams and figures, the csv index, several at once,
resume into the same tracker run, a missing extra as one line, one log format."""

from __future__ import annotations

import csv
import json
import logging
import logging.config
import math
import socket
import sys
import threading
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, ctrl_c_at_test, read_json, run_cli
from segbench.tracking.base import flat_params

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

FIGURES = ("curves.png", "predictions.png", "confusion_matrix.png")


def client(cwd: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{(cwd / 'outputs' / 'mlflow.db').as_posix()}")


def runs_of(c: MlflowClient, experiment: str):
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, [e.name for e in c.search_experiments()]
    return c.search_runs([exp.experiment_id])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, Path, str]:
    """One tiny run with MLflow and the csv index at once, progress lines every step."""
    cwd = tmp_path_factory.mktemp("tracked")
    proc = run_cli("train", *TINY, "logger=[mlflow,csv]", "hydra.run.dir=outputs/train/tiny",
                   "trainer.progress_every_steps=1", cwd=cwd)
    return cwd, cwd / "outputs/train/tiny", proc.stdout


def test_mlflow_local_store_holds_the_run_as_the_run_directory_does(tracked):
    cwd, run_dir, _ = tracked
    c = client(cwd)
    (run,) = runs_of(c, "train")  # the experiment is the run's folder below outputs/
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.tags["segbench.run_dir"] == str(run_dir.resolve())
    assert read_json(run_dir / "trackers.json")["mlflow"]["run_id"] == run.info.run_id

    # Params: the resolved config, flattened, every key.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    flat = flat_params(config)
    assert set(run.data.params) == set(flat)
    assert run.data.params["optimizer.lr"] == str(config["optimizer"]["lr"])
    assert run.data.params["model.decoder_channels.2"] == "8"

    # Per-epoch metrics: history.csv, step = epoch.
    with open(run_dir / "history.csv") as f:
        history = list(csv.DictReader(f))
    for key in ("train_loss", "val_iou", "val_dice", "lr"):
        points = c.get_metric_history(run.info.run_id, key)
        assert [p.step for p in points] == [int(r["epoch"]) for r in history]
        assert [p.value for p in points] == pytest.approx([float(r[key]) for r in history],
                                                          rel=1e-9)

    # Test metrics and the selection numbers: metrics.json.
    metrics = read_json(run_dir / "metrics.json")
    for key in ("dice", "iou", "dice_micro", "iou_micro", "precision", "recall", "hd95"):
        assert run.data.metrics[f"test_{key}"] == pytest.approx(metrics["test"][key], rel=1e-12)
    assert run.data.metrics["best_val_iou"] == pytest.approx(metrics["val_best"]["iou"])
    assert run.data.metrics["best_epoch"] == metrics["best_epoch"]

    # Artifacts: the figures and metrics.json, byte for byte.
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {*FIGURES, "metrics.json", "history.csv", "config.yaml"} <= names
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                     artifact_path="metrics.json",
                                                     tracking_uri=c.tracking_uri))
    assert json.loads(local.read_text()) == metrics
    # The artifacts stay inside the outputs folder, beside the store.
    assert (cwd / "outputs" / "mlartifacts").is_dir()


def test_csv_index_has_one_row_per_finished_run(tracked):
    cwd, run_dir, _ = tracked
    with open(cwd / "outputs" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    metrics = read_json(run_dir / "metrics.json")
    assert rows[0]["run_dir"] == str(run_dir.resolve()) and rows[0]["experiment"] == "train"
    assert float(rows[0]["test_dice"]) == pytest.approx(metrics["test"]["dice"])
    assert float(rows[0]["best_val_iou"]) == pytest.approx(metrics["val_best"]["iou"])
    assert "logger=[mlflow,csv]" in rows[0]["overrides"]


def test_a_run_without_a_terminal_prints_progress_lines(tracked):
    _, run_dir, stdout = tracked
    steps = json.loads((run_dir / "metrics.json").read_text())["split_sizes"]["train"] // 8
    # trainer.progress_every_steps=1: a line per training step with step/steps, images/s, ETA.
    lines = [line for line in stdout.splitlines() if "epoch 1/2  step " in line]
    assert len(lines) == steps, stdout[-3000:]
    assert all(" img/s" in line and "ETA " in line for line in lines)
    assert f"step {steps}/{steps}" in lines[-1] and "loss 0." in lines[-1]
    # The same lines are in train.log (one log, one format).
    log_text = (run_dir / "train.log").read_text()
    assert lines[-1].split("] ", 1)[1] in log_text


def test_tensorboard_gets_hparams_and_the_prediction_figure(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tiny_run / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"test/predictions", "test/curves", "test/confusion_matrix"} <= set(tags["images"])
    assert "hparam/best_val_iou" in tags["scalars"] and "val/iou" in tags["scalars"]
    assert acc.PluginTagToContent("hparams")  # the hparams plugin's session records
    metrics = read_json(tiny_run / "metrics.json")
    assert acc.Scalars("hparam/best_val_iou")[-1].value == pytest.approx(
        metrics["val_best"]["iou"], rel=1e-6)


def test_a_sweep_is_one_experiment_and_a_resumed_run_is_one_run(tracked, monkeypatch):
    """Two jobs, the second interrupted during its test and resumed by re-running the sweep:
    one MLflow experiment, two runs named after their overrides, each FINISHED once. (In the
    folder of `tracked`: one store for both, as on a user's machine.)"""
    tmp_path = tracked[0]
    ctrl_c_at_test(monkeypatch, 2)  # in the second job
    args = ("train", "-m", *TINY, "logger=mlflow", "optimizer=adam,sgd")
    first = run_cli(*args, cwd=tmp_path, check=False)
    assert first.returncode == 130
    assert "job 1 of 2: optimizer=adam" in first.stdout
    assert "job 2 of 2: optimizer=sgd" in first.stdout
    assert "sweep ETA" in first.stdout
    c = client(tmp_path)
    (sweep,) = [e for e in c.search_experiments() if e.name.startswith("multirun/")]
    states = {r.info.run_name: r.info.status for r in c.search_runs([sweep.experiment_id])}
    assert states == {"optimizer=adam/seed=0": "FINISHED", "optimizer=sgd/seed=0": "KILLED"}

    again = run_cli(*args, cwd=tmp_path)
    assert "continued" in again.stdout
    runs = c.search_runs([sweep.experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        ("optimizer=adam/seed=0", "FINISHED"), ("optimizer=sgd/seed=0", "FINISHED")]
    sgd = next(r for r in runs if r.info.run_name == "optimizer=sgd/seed=0")
    points = c.get_metric_history(sgd.info.run_id, "val_iou")
    assert [p.step for p in points] == [1, 2]  # no repeats
    assert "test_dice" in sgd.data.metrics
    assert sweep.name == f"multirun/{Path(sgd.data.tags['segbench.run_dir']).parents[1].name}"


class Listener:
    """A TCP port on the loopback that counts the connections made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(1)
            try:
                self.requests.append(conn.recv(200))
            except OSError:
                self.requests.append(b"")
            conn.close()

    def close(self):
        self.sock.close()


def test_wandb_without_an_api_key_logs_offline_and_sends_nothing(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    listener = Listener()
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{listener.port}",
           "NETRC": str(tmp_path / "no-netrc"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wc"),
           "WANDB_DATA_DIR": str(tmp_path / "wd")}
    try:
        run_cli("train", *TINY, "logger=wandb", "hydra.run.dir=run", cwd=tmp_path, env=env)
        wandb.teardown()  # W&B's service flushes and exits: anything it would send, it sends now
    finally:
        listener.close()
    assert listener.requests == []
    record = read_json(tmp_path / "run" / "trackers.json")["wandb"]
    assert record["mode"] == "offline" and record["last_epoch"] == 2
    (folder,) = (tmp_path / "run" / "wandb").glob(f"offline-run-*-{record['run_id']}")
    data = (folder / f"run-{record['run_id']}.wandb").read_bytes()
    assert len(data) > 1000
    for text in (b"val_iou", b"test_dice", b"metrics.json", b"segbench.run_dir"):
        assert text in data, text
    images = {p.name.split("_")[0] for p in (folder / "files" / "media" / "images").glob("*.png")}
    assert images == {"curves", "predictions", "confusion"}


def test_a_tracker_whose_extra_is_missing_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    proc = run_cli("train", *TINY, "logger=[tensorboard,wandb]", "hydra.run.dir=run", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert 'pip install "segbench[wandb]"' in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_an_unknown_tracker_names_the_choices(tmp_path):
    proc = run_cli("train", *TINY, "+logger.neptune={}", "hydra.run.dir=run", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert "logger.neptune" in proc.stdout and "tensorboard, mlflow, wandb, csv" in proc.stdout


def test_hydra_and_segbench_log_in_one_format_without_library_noise(tmp_path):
    configs = ROOT / "configs" / "hydra"
    job = yaml.safe_load((configs / "job_logging" / "segbench.yaml").read_text())
    hydra = yaml.safe_load((configs / "hydra_logging" / "segbench.yaml").read_text())
    assert hydra["formatters"] == job["formatters"]  # Hydra's own lines look like segbench's

    from segbench.commands import log_file

    job["handlers"]["console"]["stream"] = "ext://sys.stderr"
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logging.config.dictConfig(job)
        # The run's log file as train opens it: the console's format and filter.
        with log_file(tmp_path / "train.log"):
            logging.getLogger("matplotlib.font_manager").warning(
                "Matplotlib is building the font cache; this may take a moment.")
            logging.getLogger("mlflow.store.db.utils").info(
                "Creating initial MLflow database tables...")
            logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
            logging.getLogger("segbench.train").info("epoch 1/2  train_loss 0.5")
            logging.getLogger("matplotlib").error("a real matplotlib error")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = (tmp_path / "train.log").read_text()
    assert "epoch 1/2" in text and "a real matplotlib error" in text
    assert "font cache" not in text and "MLflow database" not in text and "SQLiteImpl" not in text
    assert all(line.startswith("[") and "] " in line for line in text.splitlines())


def test_nan_metrics_and_lists_flatten_for_trackers():
    from segbench.tracking.base import numbers

    flat = flat_params({"a": {"b": [1, {"c": None}], "d": []}, "e": True})
    assert flat == {"a.b.0": 1, "a.b.1.c": None, "a.d": [], "e": True}
    got = numbers({"x": 1, "y": math.nan, "z": True, "w": "text"}, "t_")
    assert set(got) == {"t_x", "t_y"} and math.isnan(got["t_y"])
