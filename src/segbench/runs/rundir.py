"""The run directory: the one module that knows its layout and writes its records.

    <run_dir>/
      .hydra/          config.yaml, overrides.yaml, hydra.yaml (Hydra's own)
      config.yaml      the resolved config
      status.json      running (with pid and host) | interrupted | failed (with the error)
                       | finished
      train.log        the log of every attempt
      split.json       the image ids of each split
      history.csv      one row per epoch
      checkpoints/     last.pt (every epoch), best.pt (best value of the monitored metric)
      metrics.json     the test metrics of best.pt, model facts, timings, environment
      per_case.csv  per_volume.csv  curves.png  predictions.png  predictions.npz  cases.npz
      confusion_matrix.png  tb/
      trackers.json    the experiment trackers' run ids (a resumed run continues the same runs)

Every record is written atomically (a temporary file in the same folder, flushed to disk and
renamed over the old one), so a crash leaves either the old or the new version, never half of one.
`train`, `eval`, `predict`, `export` and `report` all read runs through `RunDir`.

One process writes a run at a time: `train` holds an OS lock on the run directory (flock, released
by the operating system when the process ends, however it ends); `state()` reads the lock to tell
a running run from a killed one. What segbench guarantees after a crash: docs/guarantees.md.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import yaml
from omegaconf import DictConfig, OmegaConf

from segbench import SegbenchError
from segbench.atomic import pid_alive, remove_stale_temporaries, write_atomic
from segbench.registry import check_trusted

if sys.platform != "win32":  # flock; on Windows one writer is the user's to ensure
    import fcntl

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
STATUS = "status.json"
LOG = "train.log"
SPLIT = "split.json"
HISTORY = "history.csv"
METRICS = "metrics.json"
PER_CASE = "per_case.csv"
PER_VOLUME = "per_volume.csv"
CURVES = "curves.png"
PREDICTIONS = "predictions.png"
PREDICTION_SAMPLES = "predictions.npz"
CASES = "cases.npz"  # every test case's predicted mask, for the report's galleries (cases.py)
CONFUSION = "confusion_matrix.png"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"
TRACKERS = "trackers.json"
HYDRA = ".hydra"
CHECKPOINT_NAMES = ("best", "last")

# Config keys that never make two runs different configurations (paths, devices, logging); and
# the keys that tell repeats of one configuration apart (`segbench report` pools those runs).
BOOKKEEPING = ("trainer.resume", "trainer.device", "trainer.num_workers", "trainer.progress",
               "trainer.log_every_steps", "paths.", "dataset.root", "eval.num_predictions",
               "eval.surface_workers", "eval.latency", "logger")
REPLICATE_KEYS = ("seed", "dataset.fold")
ENSEMBLE = "ensemble.json"  # beside metrics.json in a `segbench ensemble` output

# Config keys a resumed run may change; anything else must match the interrupted run.
RESUMABLE_CHANGES = ("trainer.resume", "trainer.max_epochs", "trainer.device",
                     "trainer.num_workers", "trainer.compile",
                     "trainer.progress", "trainer.log_every_steps", "paths.",
                     "eval.surface_", "eval.native_resolution", "eval.latency", "logger")


# How to train a finished job again rather than skip it (a sweep re-run on other data or config).
RERUN_HINT = ("To train it again, re-run in a new folder (hydra.sweep.dir=<new folder>, or "
              "hydra.run.dir= for one run) or move the old run away")


# Colour and cursor escapes (a coloured library message, a progress bar) never reach a record.
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def plain(text: str) -> str:
    return ANSI.sub("", text)


def write_json(path: Path, doc: dict) -> None:
    write_atomic(path, json.dumps(doc, indent=2, default=str))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SegbenchError(f"{path} is missing") from None
    except (OSError, ValueError) as err:
        raise SegbenchError(f"{path} is unreadable ({err}); it is truncated or corrupt") from None


MAX_YAML_BYTES = 1 << 20  # a run's config.yaml is a few KB; anything this big is not one


def load_yaml(path: Path):
    """A YAML file of a run directory as an OmegaConf object, refused (one line) before parsing
    when it is over MAX_YAML_BYTES or uses anchors or aliases, which segbench never writes and
    which let a small file expand to billions of nodes (a "billion laughs")."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise SegbenchError(f"{path} is {size / 2**20:.1f} MiB, over the "
                                f"{MAX_YAML_BYTES >> 20} MiB a run's YAML file may have; it is "
                                "not a file segbench wrote")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SegbenchError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SegbenchError(f"{path} is unreadable ({err}); it is truncated or corrupt") from None
    try:  # the scanner only tokenizes: aliases are found without being expanded
        if any(isinstance(t, (yaml.AnchorToken, yaml.AliasToken)) for t in yaml.scan(text)):
            raise SegbenchError(f"{path} uses YAML anchors or aliases (&name / *name), which "
                                "segbench never writes and does not read from a run directory; "
                                "it is not a file segbench wrote")
        return OmegaConf.create(text)
    except SegbenchError:
        raise
    except Exception as err:  # a YAML parser error
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SegbenchError(f"{path} is unreadable: {first}") from None


def is_bookkeeping(key: str) -> bool:
    return key.startswith(BOOKKEEPING)


def value_text(value) -> str:
    """One spelling per value, for comparing and labelling settings (`0.003`, `true`, `null`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunDir:
    """One training run's directory: its file names, records, checkpoints and model."""

    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path | str, needs: tuple[str, ...] = (CONFIG,), what: str = "run_dir"):
        """An existing training run, or a SegbenchError that says what is wrong with `path`."""
        run = cls(path)
        if not run.path.is_dir():
            raise SegbenchError(f"{what}={run.path}: no such directory; pass a training run "
                                "directory (e.g. outputs/quickstart/<time>)")
        for name in needs:
            if not (run.path / name).is_file():
                raise SegbenchError(f"{run.path} is not a segbench run directory: {name} is "
                                    "missing")
        return run

    def holds_run(self) -> bool:
        """Whether a run was started here (what a refused command must leave untouched)."""
        return any((self.path / name).is_file() for name in (CONFIG, METRICS, STATUS)) or \
            self.has_checkpoint("last")

    def is_run(self) -> bool:
        return (self.path / CONFIG).is_file() and (self.path / SPLIT).is_file()

    # ------------------------------------------------------------------ records

    def read_config(self, to_build: bool = True):
        """The run's config.yaml. `to_build` (anything rebuilt from it: a model, a dataset):
        refused where it names an import path this machine's user has not allowed."""
        if not (self.path / CONFIG).is_file():
            raise SegbenchError(f"{self.path} has no {CONFIG}")
        config = load_yaml(self.path / CONFIG)
        if to_build:
            check_trusted(OmegaConf.to_container(config, resolve=False), str(self.path / CONFIG))
        return config

    def settings(self) -> dict[str, str]:
        """The resolved config as `dotted.key -> value text`, bookkeeping left out (seed and
        fold kept: they tell repeats apart)."""
        config = cast(dict, OmegaConf.to_container(self.read_config(to_build=False), resolve=False))
        return {k: value_text(v) for k, v in flatten(config).items() if not is_bookkeeping(k)}

    def name(self) -> str:
        """A short name: the folder, with its parent when the folder is a sweep's seed=N."""
        parts = self.path.resolve().parts
        if parts[-1].startswith("seed=") and len(parts) > 1:
            return "/".join(parts[-2:])
        return parts[-1]

    def write_config(self, config: dict) -> None:
        write_atomic(self.path / CONFIG, OmegaConf.to_yaml(config))

    def write_hydra(self, cfg, hydra_cfg) -> None:
        """.hydra/config.yaml, hydra.yaml and overrides.yaml as Hydra writes them: segbench writes
        them itself (train sets hydra.output_subdir=null) once a run is accepted."""
        folder = self.path / HYDRA
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg))
        write_atomic(folder / "hydra.yaml",
                     OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
        write_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))

    def status(self) -> dict:
        """The recorded status ({} when there is none or it cannot be read)."""
        try:
            return json.loads((self.path / STATUS).read_text())
        except (OSError, ValueError):
            return {}

    def set_status(self, state: str, **info) -> None:
        info = {k: plain(v) if isinstance(v, str) else v for k, v in info.items()}
        write_json(self.path / STATUS, {"state": state, **info})

    def record_final(self, state: str, **info) -> bool:
        """The final state of an attempt (finished, interrupted, failed), written with SIGINT and
        SIGTERM held back so that a second Ctrl-C cannot leave "running" behind; False (and an
        error in the log) where it cannot be written, e.g. on a full or read-only disk."""
        with signals_held():
            try:
                self.set_status(state, **info)
                return True
            except OSError as err:
                log.error("could not record %r in %s: %s", state, self.path / STATUS, err)
                return False

    def state(self) -> str:
        """finished | running | killed | interrupted | failed | not started: status.json, with a
        recorded "running" checked against the run's lock (or, where locks are not available,
        its process id), so that a run whose process died is "killed", never "running"."""
        if (self.path / METRICS).is_file():  # written last: the run's test is on record
            return "finished"
        status = self.status()
        recorded = status.get("state")
        if recorded in ("interrupted", "failed"):
            return recorded
        if recorded != "running":
            return "interrupted" if self.has_checkpoint("last") else "not started"
        held = lock_held(self.path)
        if held is None:  # no locks on this file system: the recorded process, on its own host
            if status.get("host", socket.gethostname()) != socket.gethostname():
                return "running"
            held = pid_alive(int(status.get("pid", -1)))
        return "running" if held else "killed"

    def warn_if_unfinished(self, command: str) -> None:
        """A warning for eval, predict and export on a run that has not finished training."""
        state = self.state()
        if state != "finished":
            log.warning("%s %s: this run has not finished training (%s, %d epoch(s) in "
                        "history.csv): its checkpoints are not its final ones. Resume it with "
                        "`segbench train trainer.resume=%s`", command, self.path, state,
                        len(self.read_history()), self.path)

    # ------------------------------------------------------------------ one writer

    @contextlib.contextmanager
    def lock(self, wait: float = 2.0):
        """Hold the run directory's lock while the block runs; a SegbenchError naming the other
        process where one holds it. The lock is an flock on the directory itself: nothing is
        written for it, and the OS releases it when the process ends, even by SIGKILL."""
        if sys.platform == "win32":  # no flock: one writer is then the user's to ensure
            yield
            return
        fd = os.open(self.path, os.O_RDONLY)
        _hold(fd)
        try:
            deadline = time.monotonic() + wait  # `report` may be looking at it for an instant
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SegbenchError(self._busy_message()) from None
                    time.sleep(0.05)
                except OSError as err:  # a file system without locks (some network mounts)
                    log.warning("cannot lock %s (%s): make sure no other segbench process "
                                "writes to it", self.path, err)
                    break
            yield
        finally:
            _LOCKS.discard(fd)
            os.close(fd)  # releases the lock

    def _busy_message(self) -> str:
        status = self.status()
        if status.get("state") != "running" or not status.get("pid"):  # it is just starting
            status = {}
        who = f"process {status['pid']}" if status else "another process"
        if status.get("host") and status["host"] != socket.gethostname():
            who += f" on {status['host']}"
        return (f"{self.path} is in use: segbench {who} is training in it. Two trainers in one "
                "run directory would overwrite each other's files; wait for it to finish (or stop "
                f"it: kill {status.get('pid', '<pid>')}), then run this again")

    def remove_stale_temporaries(self) -> None:
        """Temporary files of atomic writes left by a killed attempt (run under the lock)."""
        removed = [p for folder in (self.path, self.path / CHECKPOINTS, self.path / HYDRA)
                   for p in remove_stale_temporaries(folder)]
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted write: %s", len(removed),
                     ", ".join(p.name for p in removed))

    def read_metrics(self) -> dict | None:
        """metrics.json, None when absent; SegbenchError when it cannot be read."""
        if not (self.path / METRICS).is_file():
            return None
        return read_json(self.path / METRICS)

    def write_metrics(self, result: dict, folder: Path | None = None) -> None:
        write_json((folder or self.path) / METRICS, result)

    def read_split(self) -> dict:
        doc = read_json(self.path / SPLIT)
        if "splits" not in doc:
            raise SegbenchError(f"{self.path / SPLIT} holds no splits; it is not a segbench "
                                "split file")
        return doc

    def write_split(self, doc: dict) -> None:
        write_json(self.path / SPLIT, doc)

    def read_history(self) -> list[dict]:
        if not (self.path / HISTORY).is_file():
            return []
        with open(self.path / HISTORY, newline="") as f:
            return list(csv.DictReader(f))

    def write_history(self, rows: list[dict]) -> None:
        if not rows:
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path / HISTORY, text.getvalue())

    def read_trackers(self) -> dict:
        """trackers.json: per tracker, its run id and the last epoch it was sent ({} if none)."""
        try:
            return json.loads((self.path / TRACKERS).read_text())
        except (OSError, ValueError):
            return {}

    def write_trackers(self, records: dict) -> None:
        write_json(self.path / TRACKERS, records)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_path(self, name: str) -> Path:
        if name not in CHECKPOINT_NAMES:
            raise SegbenchError(f"checkpoint={name!r}; use {' or '.join(CHECKPOINT_NAMES)}")
        return self.path / CHECKPOINTS / f"{name}.pt"

    def has_checkpoint(self, name: str) -> bool:
        return self.checkpoint_path(name).is_file()

    # The checkpoint format imports torch (about 2 s): here, not at the top, so that reading a
    # run's records (report, status, the CLI's checks) does not pay for it.
    def save_checkpoint(self, name: str, state: dict) -> None:
        from segbench.runs.checkpoint import save_checkpoint

        save_checkpoint(state, self.checkpoint_path(name))

    def load_checkpoint(self, name: str, map_location="cpu") -> dict:
        from segbench.runs.checkpoint import load_checkpoint

        path = self.checkpoint_path(name)
        if not path.is_file():
            hint = (" (the run has not finished an epoch yet: resume it with `segbench train "
                    f"trainer.resume={self.path}`" + (", or use checkpoint=last)" if name == "best"
                                                      and self.has_checkpoint("last") else ")"))
            raise SegbenchError(f"checkpoint not found: {path}{hint}")
        return load_checkpoint(path, map_location=map_location)

    # ------------------------------------------------------------------ decisions

    def plan(self, resume: bool, config: dict) -> str:
        """What `train` does in this directory: "skip" (finished), "resume" (an earlier attempt
        left last.pt) or "start". Refuses to overwrite a run or to resume with another config."""
        recorded = (self.path / METRICS).is_file()
        started = self.has_checkpoint("last")
        finished = recorded and resume and self._metrics_readable(started)
        if finished and resume:
            self._check_same_job(config)
            return "skip"
        if (started or recorded) and not resume:
            raise SegbenchError(
                f"{self.path} already holds a run ({CHECKPOINTS}/last.pt); continue it with "
                f"`segbench train trainer.resume={self.path}` or choose another hydra.run.dir")
        if not started:
            return "start"
        if (self.path / CONFIG).is_file():
            changes = config_changes(_to_dict(self.read_config(to_build=False)), config)
            if changes:
                raise SegbenchError(
                    "the config differs from the run being resumed, which would mix two "
                    "experiments: " + "; ".join(changes[:8])
                    + ". Resume with the run's own overrides")
        return "resume"

    def _check_same_job(self, config: dict) -> None:
        """A finished run is skipped (a sweep re-run) only as the run this command would train:
        its recorded config must match, bookkeeping aside (paths, devices, logging; where the
        data lives may differ too: the split check that follows compares the data itself)."""
        if not (self.path / CONFIG).is_file():
            return
        changes = [c for c in config_changes(_to_dict(self.read_config(to_build=False)), config)
                   if not is_bookkeeping(c.split(":", 1)[0])]
        if changes:
            raise SegbenchError(
                f"{self.path} finished with another config than this command's ("
                + "; ".join(changes[:8]) + f"); its results are not this job's. {RERUN_HINT}")

    def _metrics_readable(self, can_repeat: bool) -> bool:
        """Whether metrics.json holds a test record; where it cannot be read (a damaged disk),
        the test is repeated from the checkpoints on resume, or the error says what to do."""
        try:
            return "test" in (self.read_metrics() or {})
        except SegbenchError as err:
            if not can_repeat:
                raise SegbenchError(f"{err}, and the run has no {CHECKPOINTS}/last.pt to test "
                                    f"again: train it again in another directory") from None
            log.warning("%s: testing the run's best checkpoint again", err)
            return False


def _to_dict(cfg: DictConfig) -> dict:
    return cast(dict, OmegaConf.to_container(cfg))


def config_changes(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every setting that differs, except those a resume may change."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES)]


# Run-directory locks this process holds. A forked child (a DataLoader worker) closes its copies
# at once, so that the lock goes with this process and not with a worker that outlives it.
_LOCKS: set[int] = set()
_FORK_HANDLER: list[bool] = []


def _close_inherited_locks() -> None:
    for fd in list(_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCKS.clear()


def _hold(fd: int) -> None:
    if not _FORK_HANDLER and hasattr(os, "register_at_fork"):  # once, on the first lock
        os.register_at_fork(after_in_child=_close_inherited_locks)
        _FORK_HANDLER.append(True)
    _LOCKS.add(fd)


def lock_held(path: Path) -> bool | None:
    """Whether a process holds the lock of run directory `path` (None: locks not available)."""
    if sys.platform == "win32":
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)


def running_status() -> dict:
    """What status.json says about a running attempt: its process and host."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive while the block runs are delivered after it (a handler
    that only notes them: a signal mask would not do, as the OS may hand a process-wide signal
    to any thread, e.g. one of torch's)."""
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                    for sig in held}
    except ValueError:  # not the main thread: signals go to the main thread's handlers anyway
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)  # now, to the handlers the process had
