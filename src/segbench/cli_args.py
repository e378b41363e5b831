"""Command-line rewriting shared by the commands' `prepare()` steps (no heavy imports here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segbench import SegbenchError, config_dir

HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc")


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def has_flag(argv: list[str], *flags: str) -> bool:
    return any(a in flags or any(a.startswith(f"{f}=") for f in flags if f.startswith("--"))
               for a in argv)


def asks_for_help(argv: list[str]) -> bool:
    return has_flag(argv, *HELP_FLAGS) or any(a.startswith("--cfg") or a in ("-c",) for a in argv)


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


REQUIRED_HELP = {"run_dir": "a training run directory", "dir": "a sweep or a folder of runs",
                 "input": "an image file or a folder of images", "output": "a folder for the masks"}


def path_arguments(positional: str, quoted: tuple[str, ...] = (), required: tuple[str, ...] = (),
                   must_exist: tuple[str, ...] = ()) -> Callable[[list[str]], list[str]]:
    """A `prepare()` that accepts `segbench <command> <dir>` as well as `<positional>=<dir>`,
    quotes the values of `quoted` keys, names a missing required key before Hydra does, and
    refuses a path of `must_exist` that is not there before Hydra creates any folder."""
    keys = (positional, *quoted)

    def prepare(argv: list[str]) -> list[str]:
        out = []
        for i, arg in enumerate(argv):
            key, sep, value = arg.partition("=")
            after_flag = i > 0 and argv[i - 1].startswith("-")  # e.g. the `job` of `--cfg job`
            if sep and key in keys:
                arg = quote(key, value)
            elif not arg.startswith("-") and Path(arg).exists():
                arg = quote(positional, arg)
            elif not arg.startswith(("-", "~", "+")) and not sep and not after_flag:  # mistyped
                raise SegbenchError(f"{arg}: no such file or directory; pass "
                                    f"{positional}=<{REQUIRED_HELP.get(positional, positional)}>")
            out.append(arg)
        if asks_for_help(out):
            return out
        for key in (positional, *required):
            if not any(a.startswith(f"{key}=") for a in out):
                raise SegbenchError(f"missing {key}: pass {key}=<{REQUIRED_HELP.get(key, key)}>")
        for key in must_exist:
            value = next(a.split("=", 1)[1].strip("'\"") for a in out if a.startswith(f"{key}="))
            if not Path(value).expanduser().exists():
                raise SegbenchError(f"{key}={value}: no such file or directory")
        return out

    return prepare
