"""Sweep directories that a re-run of the same command finds again.

Hydra's default sweep directory is timestamped, so re-running a sweep would start it over in a new
folder. segbench names the sweep directory after the command instead, and each job's directory
after the overrides that vary in the sweep, seed last:

    outputs/studies/<study>/<constant overrides or "default">/<varying overrides>/seed=<seed>
    outputs/multirun/<overrides, seed left out>/<varying overrides>/seed=<seed>

so the trainer finds a finished job (skips it), an interrupted one (resumes it from last.pt) or
none (starts it) where the first attempt left it.
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

MAX_NAME = 120  # characters of one directory name before it is shortened with a hash
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
    import torch

    return 1 if torch.cuda.is_available() else 0


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("segbench.jobdir"):
        OmegaConf.register_new_resolver("segbench.jobdir", job_dirname)
    if not OmegaConf.has_resolver("segbench.gpus_per_job"):
        OmegaConf.register_new_resolver("segbench.gpus_per_job", gpus_per_job)


def _parse(argv: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

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
        named = [o for o in overrides if not _ignored(o.key_or_group)]
        study = next((str(o.value()) for o in constant if o.key_or_group == "experiment"
                      and str(o.value()).startswith("study/")), None)
        if study:
            rest = [o for o in named if o.key_or_group != "experiment" and not o.is_sweep_override()]
            base = f"outputs/studies/{safe_name(study.split('/', 1)[1])}"
        else:
            rest, base = named, "outputs/multirun"
        # Swept overrides first: they are what tells one sweep from another when a name is cut.
        rest = sorted(rest, key=lambda o: (not o.is_sweep_override(), o.input_line.lstrip("+~")))
        name = safe_name(",".join(_clean_override(o.input_line) for o in rest))
        extra.append(f"hydra.sweep.dir='{base}/{name}'")
    # Beside the user's overrides: argparse takes them as one block (`--cfg job` may follow).
    at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")),
              max(i for i, a in enumerate(argv) if a in ("-m", "--multirun")) + 1)
    return argv[:at] + extra + argv[at:]
