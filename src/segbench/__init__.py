"""segbench: a Hydra-driven experiment runner for 2D medical image segmentation studies.

From Python: `segbench.train([...])`, `segbench.evaluate(run_dir)`, `segbench.predict(run_dir,
images)`, `segbench.load_run(run_dir)` (see segbench.api). They are loaded on first use, so that
`import segbench` (and `segbench --help`) stays light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# albumentations asks PyPI for a newer version on every import (up to 2 s without network, a
# warning on an offline cluster node); a run that never touches the network is segbench's promise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


class SegbenchError(Exception):
    """A problem the user can fix (bad input, bad option, missing data).

    The CLI prints its message without a traceback; the message names the problem and the fix.
    """


# A config composed outside `segbench train` still holds `augmentation: auto` / `scheduler: auto`
# (train.yaml's defaults), which the train command resolves to the dataset's option.
AUTO_UNRESOLVED = ("{group}=auto stands for the dataset's own option and is resolved when "
                   "segbench train starts; a config composed another way needs "
                   "segbench.commands.auto_options.resolve_auto_options(cfg) first, or an "
                   "explicit {group}=<option>")


def config_dir() -> Path:
    """The Hydra config tree: inside the package in a wheel, at the repository root in a
    checkout."""
    packaged = Path(__file__).resolve().parent / "configs"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if checkout.is_dir():
        return checkout
    raise SegbenchError(f"segbench's config tree is missing (looked in {packaged} and "
                        f"{checkout}); reinstall segbench")


_API = ("train", "evaluate", "predict", "load_run", "Run")


def __getattr__(name: str) -> Any:
    if name in _API:
        # On first use: segbench.api imports this package (a cycle at import time) and, for
        # the Python API's users only, more of segbench.
        from segbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'segbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
