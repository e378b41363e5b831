"""The commands: one module each, on top of the library.

A command module defines
- `CONFIG`: its Hydra config (configs/<CONFIG>.yaml), `HELP`: one line for `segbench --help`;
- `run(cfg) -> dict | None`: reads its settings once, calls library code, returns a result;
- optionally `prepare(argv) -> argv`: rewrites the command line before Hydra parses it (e.g.
  `train trainer.resume=<dir>` -> that run's own overrides), raising SegbenchError to refuse.

Command modules import heavy libraries (torch, smp) inside `run()` only, so that `--help` and
argument errors answer at once. `run_command()` is the one way in, for the CLI and for Python.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from segbench import SegbenchError, config_dir
from segbench.atomic import fresh_dir, holds_files, os_error_message
from segbench.cli_args import (
    asks_for_help,
    check_encoders,
    check_group_choices,
    check_keys,
    check_non_ascii,
    has_flag,
    quote_numeric_choices,
)

# Hydra and OmegaConf (and segbench.runs.sweeps, which imports them) load inside the functions
# that run a command: they take about a second to import, and `segbench --help`, `--version`
# and the argument checks load this package without running one.

log = logging.getLogger("segbench")

NAMES = ("train", "eval", "report", "ensemble", "predict", "download", "verify", "info", "export",
         "preview", "explain")


def load(name: str) -> ModuleType:
    if name not in NAMES:
        raise SegbenchError(f"unknown command {name!r}; commands: {', '.join(NAMES)}")
    return importlib.import_module(f"segbench.commands.{name}")


def prepare_argv(name: str, argv: list[str]) -> list[str]:
    """The command line as Hydra gets it, for the CLI and the Python API alike: keys and group
    choices checked (one line naming the closest options), encoder names checked before torch
    loads, numeric choices quoted, then the command's own prepare() (paths, required keys,
    resume); SegbenchError to refuse."""
    module = load(name)
    if has_flag(argv, "--shell-completion", "-sc"):  # a half-typed line: Hydra completes it
        return argv
    check_keys(argv, module.CONFIG, name)
    check_group_choices(argv)
    check_encoders(argv)
    argv = quote_numeric_choices(argv)
    argv = module.prepare(argv) if hasattr(module, "prepare") else argv  # quotes known paths
    check_non_ascii(argv)
    return argv


class HydraTask:
    """The function Hydra runs for each job: `command.run(cfg)`, with a SegbenchError logged as
    one line. Launchers that run jobs in other processes (joblib, submitit, Ray) pickle it; its
    unpickling registers segbench's config resolvers there, before Hydra resolves the job's
    directory, so that no module has to register them as a side effect of being imported."""

    def __init__(self, name: str, raise_errors: bool = False):
        self.name = name
        self.raise_errors = raise_errors
        self.results: list[tuple[str, object]] = []  # (job output dir, run()'s value), this process
        self.failed: list[str] = []  # output dirs of this process's sweep jobs that failed

    def __reduce__(self):
        return _restore_task, (self.name, self.raise_errors)

    def __call__(self, cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        module = load(self.name)
        hydra_cfg = HydraConfig.get()
        output_dir = hydra_cfg.runtime.output_dir
        try:
            if getattr(module, "OWN_LOG_FILE", False):  # the command opens its log when ready
                result = module.run(cfg)
            else:
                with log_file(Path(output_dir) / f"{hydra_cfg.job.name}.log"):
                    result = module.run(cfg)
        except (SegbenchError, OSError) as err:
            message = err if isinstance(err, SegbenchError) else os_error_message(err)
            if message is None:  # an OS error segbench has no advice for
                raise
            log.error("%s", message)
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                _remove_refused(Path(output_dir), f"{hydra_cfg.job.name}.log")
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                self.results.append((output_dir, None))
                self.failed.append(output_dir)
                return None  # this job failed (its run dir says why); the sweep goes on
            if self.raise_errors:
                if isinstance(err, SegbenchError):
                    raise
                raise SegbenchError(str(message)) from None
            raise SystemExit(2) from None
        self.results.append((output_dir, result))
        return result


@contextlib.contextmanager
def log_file(path: Path):
    """Log to `path` too (appending, in the console's format) while the block runs."""
    root = logging.getLogger()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    console = next((h for h in root.handlers if h.formatter is not None), None)
    handler.setFormatter(console.formatter if console else
                         logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%H:%M:%S"))
    for f in console.filters if console else []:
        handler.addFilter(f)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


# Commands whose every call writes a new output folder: created exclusively, a suffix (-2, -3)
# where one of that name exists (two evals in the same second, a second ensemble or export);
# the config key that names the folder, if any, is set to the folder actually used.
FRESH_OUTPUT = {"eval": None, "ensemble": "output", "export": None}
# Commands that write into a folder the user names: refused where it holds files already.
EMPTY_OUTPUT = {"predict": "output"}


# Output folders OutputDir created in this process: {folder: the topmost folder it had to make}.
_CREATED: dict[str, Path] = {}


def _remove_refused(folder: Path, log_name: str) -> None:
    """A refused command leaves nothing behind: the folders this command created for its
    output are removed again when they hold no more than its log (the console said why)."""
    top = _CREATED.pop(str(folder.absolute()), None)
    if top is None:
        return
    with contextlib.suppress(OSError):
        if {p.name for p in folder.iterdir()} <= {log_name}:
            (folder / log_name).unlink(missing_ok=True)
            while True:
                folder.rmdir()  # only an empty folder goes
                if folder == top:
                    break
                folder = folder.parent


class OutputDir:
    """A Hydra callback: creates the run (or sweep) directory before Hydra does, so that a
    folder that cannot be created (read-only disk, no permission, disk full) is one line with
    the fix and exit code 2, not Hydra's traceback; and so that no command's output lands in
    another call's folder (FRESH_OUTPUT, EMPTY_OUTPUT)."""

    def __init__(self, command: str):
        self.command = command

    def on_run_start(self, config, **kwargs) -> None:
        from omegaconf import open_dict, read_write

        folder = Path(str(config.hydra.run.dir))
        own_log = f"{self.command}.log"  # appended to by every call: not another call's output
        if (self.command in EMPTY_OUTPUT and not config.get("overwrite", False)
                and holds_files(folder, ignore=(own_log,))):
            self._refuse(f"{EMPTY_OUTPUT[self.command]}={folder} holds files already (another "
                         "prediction's masks would mix with these); choose an empty or new folder, "
                         "or pass overwrite=true to write into it anyway")
        if self.command not in FRESH_OUTPUT:
            self._make(folder, "hydra.run.dir")
            return
        made = self._make(folder, "hydra.run.dir", fresh=True)
        with read_write(config), open_dict(config):
            config.hydra.run.dir = str(made)
            if FRESH_OUTPUT[self.command]:
                config[FRESH_OUTPUT[self.command]] = str(made)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._make(config.hydra.sweep.dir, "hydra.sweep.dir")

    def on_run_end(self, config, **kwargs) -> None:
        pass

    def on_multirun_end(self, config, **kwargs) -> None:
        pass

    def on_job_start(self, config, **kwargs) -> None:
        pass

    def on_job_end(self, config, job_return, **kwargs) -> None:
        pass

    def _make(self, folder, key: str, fresh: bool = False) -> Path:
        path = Path(str(folder)).absolute()
        # The topmost folder this call creates: a refused command removes it again.
        top = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
        try:
            if fresh:
                made = fresh_dir(path)
                if made != path:  # a suffixed sibling (-2, -3): only it is new
                    top = made
            else:
                path.mkdir(parents=True, exist_ok=True)
                made = path
            if top is not None:
                _CREATED[str(made)] = top
            return made
        except OSError as err:
            message = os_error_message(err, f"{key}=<a folder you can write to>")
            if message is None:
                raise
            self._refuse(message)

    def _refuse(self, message: str) -> NoReturn:
        print(f"segbench {self.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def _restore_task(name: str, raise_errors: bool = False) -> HydraTask:
    from segbench.runs.sweeps import register_resolvers

    register_resolvers()
    return HydraTask(name, raise_errors)


def run_command(name: str, argv: list[str], *,
                raise_errors: bool = False) -> list[tuple[str, object]]:
    """Run command `name` with a Hydra command line (overrides, -m, --cfg, --help), in this
    process; returns (output dir, result) of each job that ran in this process. Raises
    SystemExit as a CLI does (2 for a refused command); with `raise_errors` (the Python API),
    a refused single run raises its SegbenchError instead."""
    import hydra

    from segbench.runs.sweeps import register_resolvers

    module = load(name)
    register_resolvers()
    task = HydraTask(name, raise_errors)

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=module.CONFIG)
    def entry(cfg):
        return task(cfg)

    if not asks_for_help(argv):  # the output folder is created, or refused in one line, first
        argv = [*argv, f"+hydra.callbacks.segbench_output_dir._target_={__name__}.OutputDir",
                f"+hydra.callbacks.segbench_output_dir.command={name}"]
    saved = sys.argv
    sys.argv = [f"segbench-{name}", *argv]
    try:
        entry()
    finally:
        sys.argv = saved
    if task.failed and not raise_errors:  # the Python API returns them, each saying it failed
        log.error("%d of %d job(s) of this sweep failed (each one's error is above and in its "
                  "status.json): %s", len(task.failed), len(task.results), ", ".join(task.failed))
        raise SystemExit(1)
    return task.results
