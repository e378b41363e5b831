"""segbench from Python: `segbench.train`, `evaluate`, `predict` and `load_run`.

The same code path as the CLI (the commands' prepare() and run() through Hydra, with the same
output directories relative to the working directory), with Python's manners: no SystemExit,
a refused command raises SegbenchError, results are returned, and the process is left as it was
(Hydra's global state, the log handlers, sys.argv), so it can be called again and again, e.g.
from a notebook:

    import segbench
    run = segbench.train(["experiment=quickstart", "trainer.max_epochs=5"])
    run.metrics["test"]["dice"], run.history[-1]["val_iou"]
    runs = segbench.train(["optimizer=adam,sgd"], multirun=True)
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np

from segbench import SegbenchError, commands
from segbench.commands.train import prepare
from segbench.runs.rundir import PER_CASE, RunDir

# torch, Hydra, OmegaConf and the segbench modules that import them load inside the functions
# that use them: `import segbench` loads this module on first use of segbench.train & co., and
# `segbench.train(...)` pays for Hydra only when it runs (tests/test_api.py).

__all__ = ["Run", "evaluate", "load_run", "predict", "train"]


@dataclass
class Run:
    """A training run directory, read: its config, history, metrics and status; `model` loads
    the best checkpoint (on the CPU, in eval mode) when first used."""

    path: Path
    config: dict
    history: list[dict]          # one dict per epoch: pandas.DataFrame(run.history) works
    metrics: dict | None         # metrics.json (None until the run finished)
    status: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.metrics is not None and "test" in self.metrics

    def __repr__(self) -> str:
        """One line: where, how far, and the test Dice (the config and history are attributes)."""
        state = self.status.get("state") or ("finished" if self.finished else "unknown")
        dice = (self.metrics or {}).get("test", {}).get("dice")
        shown = f", test dice {dice:.4f}" if isinstance(dice, (int, float)) else ""
        return f"Run('{self.path}', {state}{shown})"

    @cached_property
    def per_case(self):
        """The test metrics per image (per_case.csv): a pandas DataFrame when pandas is
        installed, else a list of dicts (numbers as numbers); empty before the run finished."""
        path = Path(self.path) / PER_CASE
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = [{k: _number(v) if k not in ("image", "group", "volume") else v
                         for k, v in row.items()} for row in csv.DictReader(f)]
        try:
            import pandas  # optional: not a dependency of segbench
        except ImportError:
            return rows
        return pandas.DataFrame(rows)

    def load_model(self, checkpoint: str = "best", device: str = "cpu"):
        """The run's model with `checkpoint` (best | last) loaded, in eval mode."""
        from segbench.models import load_trained

        model, _, _ = load_trained(RunDir.open(self.path), checkpoint, device)
        return model.eval()

    @cached_property
    def model(self):
        return self.load_model()


def load_run(run_dir: str | os.PathLike) -> Run:
    """A run directory's config (resolved, as a dict), history (numbers as numbers), metrics
    and status; SegbenchError if it is not a run directory."""
    from omegaconf import OmegaConf

    run = RunDir.open(os.fspath(run_dir))
    history = [{k: _number(v) for k, v in row.items()} for row in run.read_history()]
    # A run's config.yaml is a mapping.
    config = cast(dict, OmegaConf.to_container(run.read_config(to_build=False), resolve=True))
    return Run(run.path.resolve(), config, history, run.read_metrics(), run.status())


def _number(text):
    if text is None or text == "":
        return math.nan
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    written_as_int = "." not in str(text) and "e" not in str(text).lower()
    return int(value) if value.is_integer() and written_as_int else value


def overrides(args: Sequence[str] | None = None, kwargs: dict | None = None) -> list[str]:
    """Hydra overrides from a list (`["model=unetpp"]`) and keywords (`model="unetpp"`;
    dotted keys through a dict: `**{"trainer.max_epochs": 5}`)."""
    if isinstance(args, (str, bytes)):
        raise SegbenchError("pass overrides as a list, e.g. segbench.train(['model=unetpp'])")
    out = [str(a) for a in (args or [])]
    flags = [a for a in out if a.startswith("-")]
    if flags:
        raise SegbenchError(f"{flags[0]}: command-line flags are not overrides; use "
                            "multirun=True for -m, and the CLI for --cfg and --help")
    for key, value in (kwargs or {}).items():
        out.append(f"{key}={_value(value)}")
    return out


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and any(c in value for c in " ,=[]{}()'\"\\:"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


@contextlib.contextmanager
def _isolated():
    """Errors come out as exceptions (HYDRA_FULL_ERROR); afterwards Hydra's global state is
    cleared and the log handlers are those of before (a run's train.log is closed)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved_env = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        from hydra.core.global_hydra import GlobalHydra  # Hydra is loaded by now: it ran

        GlobalHydra.instance().clear()


def _run(name: str, argv: list[str]) -> list[tuple[str, object]]:
    """A command through the CLI's own steps (numeric choices quoted, prepare(), Hydra)."""
    argv = commands.prepare_argv(name, argv)
    with _isolated():
        try:
            return commands.run_command(name, argv, raise_errors=True)
        except SegbenchError:
            raise
        except SystemExit as stop:
            if stop.code == 130:
                raise KeyboardInterrupt(f"segbench {name} was interrupted") from None
            raise SegbenchError(f"segbench {name} stopped (exit code {stop.code}); "
                                "see its log above") from None
        except Exception as err:
            from hydra.errors import HydraException
            from omegaconf.errors import OmegaConfBaseException

            if isinstance(err, (HydraException, OmegaConfBaseException)):
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise SegbenchError(f"segbench {name}: {first}") from err
            raise


def _sweep_dir(argv: list[str]) -> Path | None:
    for arg in argv:
        if arg.startswith("hydra.sweep.dir="):
            return Path(arg.split("=", 1)[1].strip("'\""))
    return None


def train(args: Sequence[str] | None = None, /, *, multirun: bool = False,
          **kwargs: Any) -> Run | list[Run]:
    """`segbench train <overrides>`: one run (its `Run`), or with `multirun=True` a sweep (a
    `Run` per job directory, in job order). Output directories are the CLI's (outputs/...
    under the working directory, or hydra.run.dir / hydra.sweep.dir)."""
    argv = overrides(args, kwargs)
    if multirun:
        argv = ["-m", *argv]
        sweep = _sweep_dir(prepare(list(argv)))
        results = _run("train", argv)
        dirs = [Path(d) for d, _ in results]
        if sweep is not None and sweep.is_dir():  # jobs in other processes (parallel launchers)
            from segbench.report import find_run_dirs

            known = {x.resolve() for x in dirs}
            dirs += [d for d in find_run_dirs(sweep) if d.resolve() not in known]
        return [load_run(d) for d in dirs if (d / "config.yaml").is_file()]
    results = _run("train", argv)
    if not results:
        raise SegbenchError("segbench train ran no job")
    return load_run(results[-1][0])


def evaluate(run_dir: str | os.PathLike, args: Sequence[str] | None = None, /, **kwargs) -> dict:
    """`segbench eval run_dir=<run_dir> <overrides>`: the record it writes to
    <run_dir>/eval/<time>/metrics.json (keys: split, checkpoint, threshold, ..., test or val)."""
    results = _run("eval", [f"run_dir={os.fspath(run_dir)}", *overrides(args, kwargs)])
    out_dir, result = results[-1]
    return {**cast(dict, result), "output_dir": str(out_dir)}  # eval's run() returns its record


def predict(run_dir: str | os.PathLike, images, output: str | os.PathLike | None = None, /, *,
            checkpoint: str = "best", device: str = "auto", threshold: float | None = None,
            tta: bool | None = None, probabilities: bool | str = False):
    """Segment images with a run's checkpoint.

    - `images` a path (an image or a folder of them): `segbench predict` itself, writing masks,
      overlays and areas.csv into `output` (required); returns its record with `output`.
      `probabilities=True` (or "png") writes each image's probability too (predict.probabilities).
    - `images` a list of arrays (H x W or H x W x C, decoded as the run's dataset decodes them,
      e.g. uint8 RGB): the same prediction in memory; returns one boolean mask per image at the
      image's own size, or with `probabilities=True` its foreground probability (float32).
    """
    if isinstance(images, (str, os.PathLike)):
        if output is None:
            raise SegbenchError("predict(run_dir, images, output): pass an output folder for the "
                                "masks, or a list of arrays to get the masks back")
        argv = [f"run_dir={os.fspath(run_dir)}", f"input={os.fspath(images)}",
                f"output={os.fspath(output)}", f"checkpoint={checkpoint}", f"device={device}"]
        if threshold is not None:
            argv.append(f"eval.threshold={threshold}")
        if tta is not None:
            argv.append(f"eval.tta={str(tta).lower()}")
        if probabilities:
            argv.append(f"predict.probabilities={_value(probabilities)}")
        _, result = _run("predict", argv)[-1]
        # predict's run() returns its record
        return {**cast(dict, result), "output": str(Path(output).resolve())}
    return _predict_arrays(run_dir, list(images), checkpoint, device, threshold, tta,
                           bool(probabilities))


def _predict_arrays(run_dir, images: Iterable, checkpoint, device, threshold, tta,
                    probabilities: bool = False) -> list:
    from segbench.inference.loop import model_task
    from segbench.inference.prediction import load_predictor, predicted_mask
    from segbench.runtime.device import resolve_device

    run = RunDir.open(run_dir)
    channels = int(run.read_config().dataset.get("channels", 3))
    arrays = []
    for i, image in enumerate(images):
        a = np.asarray(image)
        if a.ndim == 2:
            a = np.repeat(a[..., None], channels, axis=2)
        if a.ndim != 3 or a.shape[2] != channels:
            raise SegbenchError(f"image {i} has shape {a.shape}; this run takes H x W x {channels} "
                                f"(or H x W) arrays")
        arrays.append(a)
    if not arrays:
        raise SegbenchError("predict got no images")
    predictor = load_predictor([run], checkpoint, resolve_device(device),
                               {"threshold": threshold, "tta": tta})
    probs = predictor.probabilities(arrays)
    if probabilities:
        return [p.astype(np.float32) for p in probs]
    task = model_task(predictor.model)  # several classes: label maps (indices or class bits)
    return [predicted_mask(p, task, predictor.settings.threshold) for p in probs]
