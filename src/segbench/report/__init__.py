"""`segbench report <dir>`: every run below a folder, as tables, figures and statistics.

Reads run directories only (config.yaml, .hydra/, metrics.json, per_case.csv, per_volume.csv,
history.csv, split.json, status.json, predictions.npz) and writes <dir>/report/: report.md,
report.csv, tables/ (each table as CSV and LaTeX), metrics.png, curves.png, predictions.png.

- runs.py: finding runs, what each one ran (its resolved config.yaml), configurations, labels,
  preset values, the baseline.
- analysis.py: summary columns, per-case tables at the right level (volumes for volumetric
  data), comparisons, intervals, cross-validation summaries, a numeric axis.
- tables.py: a table written as Markdown, CSV and LaTeX (booktabs).
- figures.py: metrics.png (line with band along a numeric axis, bars otherwise), curves.png,
  predictions.png.
- gallery.py: the case galleries from the runs' cases.npz.
- page.py: index.html, the report as one page.
- study.py: what build_report() found (runs, baseline, tables, comparisons, figures, notes),
  which report.md and index.html both show.
- build.py: build_report() and report.md.
"""

from segbench.report.build import build_report
from segbench.report.runs import find_run_dirs

__all__ = ["build_report", "find_run_dirs"]
