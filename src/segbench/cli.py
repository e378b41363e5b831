"""`python -m segbench <command> [hydra overrides]` and the `segbench` console script.

The command word is taken off argv before Hydra parses the rest, so every Hydra form works as
written: `segbench train model=unetpp optimizer=radam`, `segbench train -m seed=0,1,2`,
`segbench train --cfg job`, `segbench train --help`.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from segbench import SegbenchError, config_dir
from segbench.sweeps import prepare_sweep, register_resolvers

log = logging.getLogger("segbench")


@dataclass(frozen=True)
class Command:
    config_name: str
    task: str  # "module:function", imported only when the command runs
    help: str
    prepare: Callable[[list[str]], list[str]] = field(default=lambda argv: argv)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _merge_overrides(old: list[str], new: list[str]) -> list[str]:
    """Old overrides first, each dropped where a new one sets the same key."""
    new_keys = {_override_key(o) for o in new if "=" in o}
    return [o for o in old if _override_key(o) not in new_keys] + new


def _quote_numeric_choices(argv: list[str]) -> list[str]:
    """`resolution=64,128` -> `resolution='64','128'`: Hydra's multirun rejects config-group
    choices that parse as integers ("Config group override must be a string"); quoted, they work
    in every mode, so users can type resolution sizes as plain numbers."""
    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        parts = value.split(",")
        if sep and key.lstrip("+~") in groups and all(p.isdigit() for p in parts):
            arg = f"{key}=" + ",".join(f"'{p}'" for p in parts)
        out.append(arg)
    return out


def _prepare_train(argv: list[str]) -> list[str]:
    """`trainer.resume=<run_dir>`: continue that run in its own directory with its own overrides."""
    for i, arg in enumerate(argv):
        if not arg.startswith("trainer.resume="):
            continue
        value = arg.split("=", 1)[1]
        if value.lower() in ("auto", "true", "false", "null", "none", ""):
            return prepare_sweep(argv)
        if any(a in ("-m", "--multirun") for a in argv):
            raise SegbenchError(
                "trainer.resume=<run_dir> resumes one run; to resume a sweep, re-run the same "
                "sweep command (finished runs are skipped, interrupted ones resume)"
            )
        run_dir = Path(value).expanduser()
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            raise SegbenchError(
                f"cannot resume from {run_dir}: it is not a segbench run directory "
                f"({overrides_file} is missing)"
            )
        from omegaconf import OmegaConf

        old = [
            o
            for o in OmegaConf.to_container(OmegaConf.load(overrides_file))
            if _override_key(o) not in ("trainer.resume", "hydra.run.dir")
        ]
        new = argv[:i] + argv[i + 1 :]
        return _merge_overrides(old, new) + [
            "trainer.resume=true",
            _quote("hydra.run.dir", str(run_dir.resolve())),
        ]
    return prepare_sweep(argv)


def _quote(key: str, value: str) -> str:
    """`key='value'`: sweep job dirs and settings hold `=` and `,`, which Hydra's override grammar
    would otherwise parse."""
    if value[:1] in ("'", '"'):
        return f"{key}={value}"
    return f"{key}='" + value.replace("'", "\\'") + "'"


def _path_arguments(positional: str, quoted: tuple[str, ...] = (), required: tuple[str, ...] = ()):
    """Accept `segbench <command> <dir>` as well as `<positional>=<dir>`, quote the values of
    `quoted` keys, and name a missing required key before Hydra does."""
    keys = (positional, *quoted)

    def prepare(argv: list[str]) -> list[str]:
        out = []
        for arg in argv:
            key, sep, value = arg.partition("=")
            if sep and key in keys:
                arg = _quote(key, value)
            elif not arg.startswith("-") and Path(arg).exists():
                arg = _quote(positional, arg)
            out.append(arg)
        if not any(a in ("--help", "-h", "--hydra-help", "--info") or a.startswith("--cfg") for a in out):
            for key in (positional, *required):
                if not any(a.startswith(f"{key}=") for a in out):
                    raise SegbenchError(f"missing {key}: pass {key}=<{REQUIRED_HELP.get(key, key)}>")
        return out

    return prepare


REQUIRED_HELP = {"run_dir": "a training run directory", "dir": "a sweep or a folder of runs",
                 "input": "an image file or a folder of images", "output": "a folder for the masks"}


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train",
        "segbench.engine.trainer:train_task",
        "train, validate and test one configuration (a sweep with -m)",
        _prepare_train,
    ),
    "eval": Command(
        "eval",
        "segbench.engine.evaluate:eval_task",
        "re-evaluate a run's best checkpoint: eval run_dir=<dir> [eval.tta=true]",
        _path_arguments("run_dir"),
    ),
    "report": Command(
        "report",
        "segbench.report:report_task",
        "tables, statistics and figures of every run below a folder: report <dir>",
        _path_arguments("dir", ("report.baseline",)),
    ),
    "predict": Command(
        "predict",
        "segbench.predict:predict_task",
        "segment new images with a run: predict run_dir=<dir> input=<path> output=<dir>",
        _path_arguments("run_dir", ("input", "output"), ("input", "output")),
    ),
    "download": Command(
        "download",
        "segbench.data.download:download_task",
        "fetch a dataset into dataset.root: download dataset=kvasir_instrument|lgg_mri|lung_ct",
    ),
    "verify": Command(
        "verify",
        "segbench.data.verify:verify_task",
        "check a dataset on disk (pairs, files, sizes, mask values): verify dataset=<name>",
    ),
    "info": Command(
        "info",
        "segbench.models.info:info_task",
        "a model's parameters, size, FLOPs, latency and peak memory: info model=<name> (-m to compare)",
    ),
    "export": Command(
        "export",
        "segbench.models.export:export_task",
        "export a run's checkpoint to ONNX or TorchScript: export run_dir=<dir> format=onnx",
        _path_arguments("run_dir"),
    ),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: segbench <command> [hydra overrides] [-m] [--cfg job] [--help]",
        "",
        "commands:",
        *(f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()),
        "",
        "examples:",
        "  segbench train experiment=quickstart",
        "  segbench train model=unetpp optimizer=radam",
        "  segbench train -m optimizer=adam,sgd seed=0,1,2",
        "  segbench train -m experiment=study/optimizers seed=0,1,2",
        "  segbench report outputs/studies/optimizers/default",
        "  segbench predict run_dir=<run> input=images/ output=masks/",
        "  segbench info -m model=unet,fpn,mcnet resolution=256",
        "  segbench train --cfg job          # print the composed config",
        "  segbench <command> --help         # config groups and options of a command",
    ]
    return "\n".join(lines)


def _load_task(spec: str) -> Callable:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def _run_hydra(command: Command) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    task = _load_task(command.task)
    register_resolvers()

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command.config_name)
    def entry(cfg):
        try:
            return task(cfg)
        except SegbenchError as err:
            log.error("%s", err)
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                return None  # this job failed (its run dir says why); the sweep goes on
            raise SystemExit(2) from None

    entry()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"segbench: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    if any(a in ("-m", "--multirun") for a in rest) and any(a in ("--cfg", "-c") for a in rest):
        print(f"segbench {name}: error: --cfg prints one job's config and cannot be combined with "
              "-m; drop -m (the first value of each swept axis is not picked for you: give one)",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        rest = command.prepare(_quote_numeric_choices(rest))
    except SegbenchError as err:
        print(f"segbench {name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv = [f"segbench-{name}", *rest]
    try:
        _run_hydra(command)
    except KeyboardInterrupt:
        print(f"\nsegbench {name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
