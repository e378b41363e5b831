"""`segbench verify dataset=<name>`: check a dataset on disk (pairs, files, sizes, mask values)
and write verify.json; fails (exit 2) when it finds problems."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from segbench import SegbenchError
from segbench.atomic import write_atomic

# Hydra and segbench.data (torch, albumentations) load inside the functions that use them, so that
# `segbench --help` and argument errors answer at once.

CONFIG = "verify"
HELP = "check a dataset on disk (pairs, files, sizes, mask values): verify dataset=<name>"

log = logging.getLogger("segbench.verify")


def run(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from segbench.data.verify import format_report, verify_dataset

    report = verify_dataset(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_atomic(out_dir / "verify.json", json.dumps(report, indent=1, default=str))
    text = format_report(report)
    if report["problems"]:
        log.error("%s", text)
        raise SegbenchError(f"verify: {len(report['problems'])} problem(s) in dataset "
                            f"{report['dataset']} (report in {out_dir / 'verify.json'})")
    log.info("%s", text)
    return report
