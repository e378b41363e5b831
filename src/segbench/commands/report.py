"""`segbench report <dir>`: every training run below a folder as tables, figures and statistics,
written to <dir>/report/ (see segbench.report)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from segbench import SegbenchError
from segbench.cli_args import path_arguments
from segbench.runs.search import summary

# Hydra and segbench.report (torch, matplotlib, scipy) load inside the functions that use them, so
# that `segbench --help` and argument errors answer at once.

CONFIG = "report"
HELP = "tables, statistics and figures of every run below a folder: report <dir>"

prepare = path_arguments("dir", ("report.baseline",), must_exist=("dir",))

log = logging.getLogger("segbench.report")


def run(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from segbench.report import build_report

    r = cfg.report
    metrics = tuple(r.metrics) if not isinstance(r.metrics, str) else (r.metrics,)
    if not 0 < float(r.alpha) < 1:
        raise SegbenchError(f"report.alpha={r.alpha}; use a level between 0 and 1, e.g. 0.05")
    if int(r.bootstrap) < 100:
        raise SegbenchError(f"report.bootstrap={r.bootstrap}; use at least 100 resamples "
                            "(10000 is usual)")
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = build_report(Path(cfg.dir).expanduser(), out_dir, baseline=r.baseline, metrics=metrics,
                          alpha=float(r.alpha), n_resamples=int(r.bootstrap), seed=int(r.seed),
                          max_predictions=int(r.predictions))
    log.info("%d runs, %d configurations (%d finished runs); baseline: %s", result["runs"],
             result["configurations"], result["finished"], result["baseline"])
    table = results_table((out_dir / "report.md").read_text())
    if table:
        print(table, flush=True)
    searched = search_section(Path(cfg.dir).expanduser(), out_dir)
    if searched is not None:
        result["search"] = searched
    log.info("wrote %s and the study page %s (open it in a browser)",
             os.path.relpath(out_dir / "report.md"), os.path.relpath(out_dir / result["page"]))
    return result


def results_table(markdown: str) -> str:
    """The main table of report.md (its `## Results` section), for the terminal."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Results"
            continue
        if inside and line.startswith("|"):
            lines.append(line.replace("**", ""))
    return "\n".join(lines)


def search_section(root: Path, out_dir: Path) -> dict | None:
    """An Optuna search folder (search.json): its trials and best configuration, printed and
    written to <dir>/report/search.md, with the command that re-runs the best with 3 seeds."""
    try:
        found = summary(root)
    except SegbenchError as err:  # e.g. the optuna extra is missing: the report itself stands
        log.warning("search section left out: %s", err)
        return None
    if found is None:
        return None
    text, facts = found
    (out_dir / "search.md").write_text(f"# segbench search: {root.resolve().name}\n\n{text}")
    print(text, flush=True)
    log.info("wrote %s", os.path.relpath(out_dir / "search.md"))
    return {k: v for k, v in facts.items() if k != "best"} | {"best": facts["best"]}
