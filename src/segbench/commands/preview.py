"""`segbench preview augmentation=<preset> dataset=<name>`: a few training images and masks under
each transform of an augmentation preset and under the whole preset, seeded (augmentation.png;
see segbench.inspection.augmentations)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from segbench import SegbenchError

CONFIG = "preview"
HELP = ("what an augmentation preset does to training images and masks: "
        "preview augmentation=<preset>")

# Hydra and segbench.inspection (matplotlib) load inside the functions that use them, so that
# `segbench --help` and argument errors answer at once.

log = logging.getLogger("segbench.preview")


def run(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from segbench.commands.auto_options import resolve_auto_options
    from segbench.inspection.augmentations import preview

    resolve_auto_options(cfg, HydraConfig.get())  # augmentation=auto: the one training would use
    if not 1 <= int(cfg.images) <= 12:
        raise SegbenchError(f"images={cfg.images}; preview between 1 and 12 images, e.g. images=4")
    out = Path(HydraConfig.get().runtime.output_dir) / "augmentation.png"
    rows = preview(cfg, out, int(cfg.images), int(cfg.seed))
    log.info("wrote %s: %d images x %d rows (original, each transform, the whole preset)",
             os.path.relpath(out), int(cfg.images), rows)
    return {"figure": str(out), "rows": rows}
