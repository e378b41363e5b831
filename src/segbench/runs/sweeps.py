"""Sweep directories that a re-run of the same command finds again.

Hydra's default sweep directory is timestamped, so re-running a sweep would start it over in a new
folder. segbench gives a sweep a readable name, what it studies and the day it started, and
records its command inside (sweep.json); each job's directory is named after the overrides that
vary in the sweep, seed last:

    outputs/studies/<study>_<date>/<varying overrides>/seed=<seed>
    outputs/multirun/<swept keys, or the search preset>_<date>/<varying overrides>/seed=<seed>

Re-running the same command (more seeds included) finds the folder whose sweep.json holds it,
whatever day it is, so the trainer finds a finished job (skips it), an interrupted one (resumes
it from last.pt) or none (starts it) where the first attempt left it. Sweeps started before
these names (a folder named after the whole command) are found under their old names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from segbench.cli_args import asks_for_help

MAX_NAME = 120  # characters of one directory name before it is shortened with a hash
RECORD = "sweep.json"  # in a sweep directory: the command that made it (found again by it)
IGNORED_KEYS = ("seed", "trainer.resume")  # neither names a sweep nor a configuration
# Nor do these, as prefixes: the trackers a sweep reports to.
IGNORED_PREFIXES = ("logger",)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.split(".")[0] in IGNORED_PREFIXES
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+@-]")


def safe_name(text: str) -> str:
    """A readable, filesystem-safe directory name; long names keep a prefix and gain a hash."""
    name = _UNSAFE.sub("_", text.replace("/", "-")).strip("._") or "default"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9]}-{digest}"
    return name


def _clean_override(line: str) -> str:
    """`+mcnet_version=v2` -> `mcnet_version=v2`, `resolution='64'` -> `resolution=64`."""
    return line.lstrip("+~").replace("'", "").replace('"', "")


def job_dirname(override_dirname: str, seed) -> str:
    """Hydra's override_dirname (constant keys excluded by the CLI), then the seed."""
    items = [_clean_override(i) for i in override_dirname.split("|") if i]
    return f"{safe_name(','.join(items))}/seed={seed}"


def gpus_per_job() -> int:
    """One GPU for a launcher's job where CUDA is available, none elsewhere (a Ray task asking
    for a GPU on a machine without one would wait forever)."""
    # Here, not at the top: this module is on the command line's path before any command runs
    # (train's prepare(), every command's resolvers) and torch takes seconds to import.
    import torch

    return 1 if torch.cuda.is_available() else 0


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("segbench.jobdir"):
        OmegaConf.register_new_resolver("segbench.jobdir", job_dirname)
    if not OmegaConf.has_resolver("segbench.gpus_per_job"):
        OmegaConf.register_new_resolver("segbench.gpus_per_job", gpus_per_job)


def _parse(argv: list[str]):
    return OverridesParser.create().parse_overrides(
        [a for a in argv if "=" in a and not a.startswith("-")])


def prepare_sweep(argv: list[str]) -> list[str]:
    """Adds a deterministic hydra.sweep.dir and leaves constant overrides out of job names.

    Only for multirun command lines; a user's own hydra.sweep.dir or exclude_keys win.
    """
    if not any(a in ("-m", "--multirun") for a in argv):
        return argv
    parsed = _parse(argv)
    keys = {o.get_key_element() for o in parsed}
    overrides = [o for o in parsed if not o.is_hydra_override()]
    constant = [o for o in overrides if not o.is_sweep_override()]
    extra = []
    if "hydra.job.config.override_dirname.exclude_keys" not in keys:
        excluded = sorted({o.key_or_group for o in constant} | set(IGNORED_KEYS))
        extra.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]")
    if "hydra.sweep.dir" not in keys:
        folder = sweep_folder(argv, overrides, constant)
        extra.append(f"hydra.sweep.dir='{folder}'")
    # Beside the user's overrides: argparse takes them as one block (`--cfg job` may follow).
    at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")),
              max(i for i, a in enumerate(argv) if a in ("-m", "--multirun")) + 1)
    return argv[:at] + extra + argv[at:]


def _label(overrides, constant) -> tuple[str, str, str]:
    """(base folder, readable label, the old command-named folder) of a sweep."""
    named = [o for o in overrides if not _ignored(o.key_or_group)]
    study = next((str(o.value()) for o in constant if o.key_or_group == "experiment"
                  and str(o.value()).startswith("study/")), None)
    if study:
        rest = [o for o in named if o.key_or_group != "experiment" and not o.is_sweep_override()]
        base, label = "outputs/studies", safe_name(study.split("/", 1)[1])
        old_base = f"{base}/{label}"
    else:
        rest, base, old_base = named, "outputs/multirun", "outputs/multirun"
        search = next((str(o.value()) for o in constant if o.key_or_group == "hparams_search"),
                      None)
        swept = [o.key_or_group.lstrip("+~") for o in named if o.is_sweep_override()]
        label = (f"search_{search}" if search and search not in ("null", "none") else
                 "+".join(dict.fromkeys(swept)) or "seeds")
    rest = sorted(rest, key=lambda o: (not o.is_sweep_override(), o.input_line.lstrip("+~")))
    old = f"{old_base}/{safe_name(','.join(_clean_override(o.input_line) for o in rest))}"
    return base, safe_name(label), old


def command_key(overrides) -> list[str]:
    """What makes two sweep command lines the same sweep: the overrides without the seed, the
    trackers and Hydra's own settings, in a fixed order."""
    return sorted(_clean_override(o.input_line) for o in overrides if not _ignored(o.key_or_group))


def sweep_folder(argv: list[str], overrides, constant) -> str:
    """The sweep directory of this command: the one whose sweep.json holds the same command,
    else a sweep's old command-named folder that exists, else `<label>_<today>` (`_2`, ... when
    another command took that name today), created with its sweep.json unless only a config
    is printed or help is asked for."""
    base, label, old = _label(overrides, constant)
    key = command_key(overrides)
    root = Path(base)
    if root.is_dir():
        for folder in sorted(root.glob(f"{label}_*")):
            try:
                if json.loads((folder / RECORD).read_text()).get("key") == key:
                    return folder.as_posix()
            except (OSError, ValueError, AttributeError):
                continue
    if Path(old).is_dir() and not (Path(old) / RECORD).exists():
        return old
    day = time.strftime("%Y-%m-%d")
    name, n = f"{label}_{day}", 1
    while (root / name).exists():
        n += 1
        name = f"{label}_{day}_{n}"
    folder = root / name
    if not asks_for_help(argv):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{RECORD}.{os.getpid()}"
            tmp.write_text(json.dumps({"key": key, "command": "segbench train " + " ".join(argv),
                                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
            tmp.replace(folder / RECORD)
        except OSError:
            pass  # OutputDir says what is wrong with the folder, in one line
    return folder.as_posix()
