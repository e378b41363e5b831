"""The run directory: the one module that knows its layout and writes its records.

    <run_dir>/
      .hydra/          config.yaml, overrides.yaml, hydra.yaml (Hydra's own)
      config.yaml      the resolved config
      status.json      running (with pid) | interrupted | failed (with the error) | finished
      train.log        the log of every attempt
      split.json       the image ids of each split
      history.csv      one row per epoch
      checkpoints/     last.pt (every epoch), best.pt (best value of the monitored metric)
      metrics.json     the test metrics of best.pt, model facts, timings, environment
      per_case.csv  per_volume.csv  curves.png  predictions.png  predictions.npz
      confusion_matrix.png  tb/
      trackers.json    the experiment trackers' run ids (a resumed run continues the same runs)

Every record is written atomically (a temporary file in the same folder, flushed to disk and
renamed over the old one), so a crash leaves either the old or the new version, never half of one.
`train`, `eval`, `predict`, `export` and `report` all read runs through `RunDir`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from segbench import SegbenchError
from segbench.atomic import write_atomic

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
RESUMABLE_CHANGES = ("trainer.resume", "trainer.max_epochs", "trainer.device", "trainer.num_workers",
                     "trainer.progress", "trainer.log_every_steps", "paths.",
                     "eval.surface_", "eval.native_resolution", "eval.latency", "logger")


def write_json(path: Path, doc: dict) -> None:
    write_atomic(path, json.dumps(doc, indent=2, default=str))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SegbenchError(f"{path} is missing") from None
    except (OSError, ValueError) as err:
        raise SegbenchError(f"{path} is unreadable ({err}); it is truncated or corrupt") from None


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
                raise SegbenchError(f"{run.path} is not a segbench run directory: {name} is missing")
        return run

    def holds_run(self) -> bool:
        """Whether a run was started here (what a refused command must leave untouched)."""
        return any((self.path / name).is_file() for name in (CONFIG, METRICS, STATUS)) or \
            self.has_checkpoint("last")

    def is_run(self) -> bool:
        return (self.path / CONFIG).is_file() and (self.path / SPLIT).is_file()

    # ------------------------------------------------------------------ records

    def read_config(self):
        from omegaconf import OmegaConf

        try:
            return OmegaConf.load(self.path / CONFIG)
        except FileNotFoundError:
            raise SegbenchError(f"{self.path} has no {CONFIG}") from None
        except Exception as err:  # a YAML parser error
            raise SegbenchError(f"{self.path / CONFIG} is unreadable: {err}") from None

    def settings(self) -> dict[str, str]:
        """The resolved config as `dotted.key -> value text`, bookkeeping left out (seed and
        fold kept: they tell repeats apart)."""
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(self.read_config(), resolve=False)
        return {k: value_text(v) for k, v in flatten(config).items() if not is_bookkeeping(k)}

    def name(self) -> str:
        """A short name: the folder, with its parent when the folder is a sweep's seed=N."""
        parts = self.path.resolve().parts
        return "/".join(parts[-2:]) if parts[-1].startswith("seed=") and len(parts) > 1 else parts[-1]

    def write_config(self, config: dict) -> None:
        from omegaconf import OmegaConf

        write_atomic(self.path / CONFIG, OmegaConf.to_yaml(config))

    def write_hydra(self, cfg, hydra_cfg) -> None:
        """.hydra/config.yaml, hydra.yaml and overrides.yaml as Hydra writes them: segbench writes
        them itself (train sets hydra.output_subdir=null) once a run is accepted."""
        from omegaconf import OmegaConf

        folder = self.path / HYDRA
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg))
        write_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
        write_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))

    def status(self) -> dict:
        """The recorded status ({} when there is none or it cannot be read)."""
        try:
            return json.loads((self.path / STATUS).read_text())
        except (OSError, ValueError):
            return {}

    def set_status(self, state: str, **info) -> None:
        write_json(self.path / STATUS, {"state": state, **info})

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
            raise SegbenchError(f"{self.path / SPLIT} holds no splits; it is not a segbench split file")
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

    def save_checkpoint(self, name: str, state: dict) -> None:
        from segbench.engine.checkpoint import save_checkpoint

        save_checkpoint(state, self.checkpoint_path(name))

    def load_checkpoint(self, name: str, map_location="cpu") -> dict:
        from segbench.engine.checkpoint import load_checkpoint

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
        finished = (self.path / METRICS).is_file()
        started = self.has_checkpoint("last")
        if finished and resume:
            return "skip"
        if (started or finished) and not resume:
            raise SegbenchError(
                f"{self.path} already holds a run ({CHECKPOINTS}/last.pt); continue it with "
                f"`segbench train trainer.resume={self.path}` or choose another hydra.run.dir")
        if not started:
            return "start"
        if (self.path / CONFIG).is_file():
            changes = config_changes(_to_dict(self.read_config()), config)
            if changes:
                raise SegbenchError(
                    "the config differs from the run being resumed, which would mix two "
                    "experiments: " + "; ".join(changes[:8]) + ". Resume with the run's own overrides")
        return "resume"

    # ------------------------------------------------------------------ the model

    def load_model(self, checkpoint: str = "best", device="cpu", config=None):
        """(model with the checkpoint's weights on `device`, the checkpoint, the run's config).
        `config`: the run's config, changed by the caller (e.g. another export size)."""
        from segbench.models import build_model

        config = config if config is not None else self.read_config()
        state = self.load_checkpoint(checkpoint, map_location=device)
        model = build_model(config, pretrained=False)  # the checkpoint holds every weight
        model.load_state_dict(state["model"])
        return model.to(device), state, config


def _to_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg)


def config_changes(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every setting that differs, except those a resume may change."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES)]
