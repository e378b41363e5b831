"""Command-line rewriting shared by the commands' `prepare()` steps (no heavy imports here)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from segbench import SegbenchError, config_dir
from segbench.suggest import check_encoder, closest

HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc")


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def has_flag(argv: list[str], *flags: str) -> bool:
    return any(a in flags or any(a.startswith(f"{f}=") for f in flags if f.startswith("--"))
               for a in argv)


def asks_for_help(argv: list[str]) -> bool:
    return has_flag(argv, *HELP_FLAGS) or any(a.startswith("--cfg") or a in ("-c",) for a in argv)


def check_non_ascii(argv: list[str]) -> None:
    """Hydra's override grammar takes characters outside ASCII only inside quotes; its lexer
    error ("token recognition error") does not say so. One line saying how to quote instead."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith("-"):
            continue
        quote_char = None
        for ch in value:
            if quote_char:
                quote_char = None if ch == quote_char else quote_char
            elif ch in "'\"":
                quote_char = ch
            elif ord(ch) > 127:
                raise SegbenchError(
                    f"{arg}: Hydra reads characters such as {ch!r} only inside quotes; quote the "
                    f"value, e.g. \"{key}='{value}'\" (the double quotes keep the single ones from "
                    "the shell)")


def merge_overrides(old: list[str], new: list[str]) -> list[str]:
    """Old overrides first, each dropped where a new one sets the same key."""
    new_keys = {override_key(o) for o in new if "=" in o}
    return [o for o in old if override_key(o) not in new_keys] + new


def quote(key: str, value: str) -> str:
    """`key='value'`: sweep job dirs and settings hold `=` and `,`, which Hydra's override grammar
    would otherwise parse."""
    if value[:1] in ("'", '"'):
        return f"{key}={value}"
    return f"{key}='" + value.replace("'", "\\'") + "'"


def quote_numeric_choices(argv: list[str]) -> list[str]:
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


def check_group_choices(argv: list[str]) -> None:
    """`model=nosuch` (or one value of a sweep `model=unet,nosuch`) is a one-line error naming the
    options there are, before Hydra composes anything (its own message is a dozen lines of
    search path). Where `hydra.searchpath` adds config folders, Hydra checks instead."""
    if any(override_key(a) == "hydra.searchpath" for a in argv):
        return
    root = config_dir()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.startswith("~") or "/" in key or not (root / key.lstrip("+")).is_dir() \
                or Path(arg).exists():  # a job folder given as a path: optimizer=adam/seed=0
            continue
        group = key.lstrip("+")
        value = value.strip()
        if any(c in value for c in "($") or value in ("", "null"):
            continue  # a sweep function (choice(...), glob(...)), an interpolation, a removal
        names = [n.strip().strip("'\"") for n in value.strip("[]").split(",")]
        unknown = [n for n in names if n and not (root / group / f"{n}.yaml").is_file()]
        if unknown:
            options = sorted((p.relative_to(root / group).with_suffix("").as_posix()
                              for p in (root / group).rglob("*.yaml")), key=_natural_order)
            hint = ""
            if group == "resolution" and unknown[0].isdigit():
                hint = (f"; for another size set resolution.height={unknown[0]} "
                        f"resolution.width={unknown[0]}")
            close = closest(unknown[0], options, 1)
            guess = f"did you mean {group}={close[0]}? " if close else ""
            raise SegbenchError(
                f"{group}={unknown[0]}: no such option in configs/{group}/; {guess}choose one of "
                f"{', '.join(options)}{hint} (or add your own: docs/extending.md)")


def _natural_order(name: str) -> list[int | str]:
    """A sort key that puts `resolution=96` before `resolution=128`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def check_encoders(argv: list[str]) -> None:
    """`model.encoder=resnet1` (or one value of a sweep) is refused with the closest few smp
    encoders before torch loads, not after seconds of start-up with smp's list of ninety."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+") != "model.encoder" or any(c in value for c in "($["):
            continue
        for name in value.split(","):
            name = name.strip().strip("'\"")
            if name and name != "null":
                check_encoder(name)


def _yaml_keys(path: Path) -> tuple[list[str], list[str]]:
    """(top-level keys, config groups of the defaults list and keys holding settings) of a
    config file, read as plain YAML (no Hydra composition: this answers before anything heavy
    loads)."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return [], []
    groups = []
    for item in doc.get("defaults") or []:
        if isinstance(item, dict):
            for k in item:
                groups.append(str(k).removeprefix("override ").strip())
    groups += [k for k, v in doc.items() if isinstance(v, dict)]
    return [k for k in doc if k != "defaults"], groups


def check_keys(argv: list[str], config_name: str, command: str) -> None:
    """`optimzer=adam` (a key the command does not have) is one line with the key it most
    likely meant, not Hydra's advice to append it with `+` (which would train without it).
    Where `hydra.searchpath` adds config folders, Hydra checks instead."""
    if any(override_key(a) == "hydra.searchpath" for a in argv):
        return
    root = config_dir()
    keys, groups = _yaml_keys(root / f"{config_name}.yaml")
    known = {*keys, *groups, "hydra"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.startswith(("+", "~", "-")) or Path(arg).exists():
            continue  # `+key=` appends on purpose; `~key` removes; flags; a path (a sweep's
            # job folder, `optimizer=adam/seed=0`) given as a command's positional argument
        top = key.split(".", 1)[0].split("/", 1)[0]
        if top in known or "/" in key:
            continue  # a path that is not there is the command's to name (`no such file`)
        close = closest(top, sorted(known - {"hydra"}), 1)
        if not close:
            guess = ""
        elif close[0] in groups or key == top:  # optimzer.lr -> optimizer.lr
            guess = f"did you mean {close[0]}{key[len(top):]}={value}? "
        else:  # a plain setting: eval's dataset.root -> data_root
            guess = f"did you mean {close[0]}={value}? "
        raise SegbenchError(f"{arg}: segbench {command} has no setting {top!r}; {guess}"
                            f"(`segbench {command} --help` lists its groups and settings)")


def launched_rank() -> tuple[int, int]:
    """(rank, world size) that torchrun gave this process; (0, 1) when it was not launched so."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def worker_argv(argv: list[str]) -> list[str]:
    """The command line of one of several processes torchrun started for one run. Ranks other
    than 0 get the working directory as Hydra's output directory (where Hydra, told to keep no
    .hydra folder, creates nothing): the run directory is rank 0's, which they receive from it
    (runtime/distributed.py), so no rank makes a timestamped directory of its own."""
    rank, world = launched_rank()
    if world <= 1 or asks_for_help(argv):
        return argv
    if has_flag(argv, "-m", "--multirun"):
        raise SegbenchError(
            "a sweep (-m) cannot run under torchrun, whose processes train one run together; "
            "sweep with trainer.devices=N (segbench starts the N processes of each job) or with "
            "hydra/launcher=slurm hydra.launcher.tasks_per_node=N")
    if rank == 0:
        return argv
    argv = [a for a in argv if override_key(a) not in ("hydra.run.dir", "hydra.output_subdir")]
    at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), len(argv))
    return argv[:at] + ["hydra.run.dir=.", "hydra.output_subdir=null"] + argv[at:]


REQUIRED_HELP = {"run_dir": "a training run directory",
                 "runs": "a folder of runs, or run directories",
                 "dir": "a sweep or a folder of runs",
                 "input": "an image file or a folder of images",
                 "output": "a folder for the masks"}


def quote_list(key: str, values: list[str]) -> str:
    """`key=['a','b']`: a list of paths, each quoted (paths of sweep jobs hold `=` and `,`)."""
    return f"{key}=[" + ",".join("'" + v.replace("'", "\\'") + "'" for v in values) + "]"


def path_arguments(positional: str, quoted: tuple[str, ...] = (), required: tuple[str, ...] = (),
                   must_exist: tuple[str, ...] = (), many: bool = False
                   ) -> Callable[[list[str]], list[str]]:
    """A `prepare()` that accepts `segbench <command> <dir>` as well as `<positional>=<dir>`,
    quotes the values of `quoted` keys, names a missing required key before Hydra does, and
    refuses a path of `must_exist` that is not there before Hydra creates any folder. With
    `many`, several positional paths (or `<positional>=[a,b]`) make a list."""
    keys = (positional, *quoted)

    def prepare(argv: list[str]) -> list[str]:
        out, paths = [], []
        for i, arg in enumerate(argv):
            key, sep, value = arg.partition("=")
            after_flag = i > 0 and argv[i - 1].startswith("-")  # e.g. the `job` of `--cfg job`
            if sep and key == positional and many and value.startswith("["):
                pass  # a list written by the user: Hydra parses it
            elif sep and key == positional and many:
                paths.append(value.strip("'\""))
                continue
            elif sep and key in keys:
                arg = quote(key, value)
            elif not arg.startswith("-") and Path(arg).exists():
                if many:
                    paths.append(arg)
                    continue
                arg = quote(positional, arg)
            elif not arg.startswith(("-", "~", "+")) and not sep and not after_flag:  # mistyped
                raise SegbenchError(f"{arg}: no such file or directory; pass "
                                    f"{positional}=<{REQUIRED_HELP.get(positional, positional)}>")
            out.append(arg)
        if paths:
            out.insert(0, quote_list(positional, paths) if len(paths) > 1
                       else quote(positional, paths[0]))
        if asks_for_help(out):
            return out
        for key in (positional, *required):
            if not any(a.startswith(f"{key}=") for a in out):
                raise SegbenchError(f"missing {key}: pass {key}=<{REQUIRED_HELP.get(key, key)}>")
        for key in must_exist:
            value = next(a.split("=", 1)[1] for a in out if a.startswith(f"{key}="))
            values = paths if key == positional and len(paths) > 1 else [value.strip("'\"")]
            if value.startswith("["):
                continue  # checked by the command
            for v in values:
                if not Path(v).expanduser().exists():
                    raise SegbenchError(f"{key}={v}: no such file or directory")
        return out

    return prepare
