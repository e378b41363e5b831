"""What build_report() found out about a study, in one object: the runs and their grouping, the
baseline, the tables, comparisons, figures and notes that report.md and index.html both show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segbench.report.runs import Configuration, Grouping, Run
from segbench.report.tables import Table


@dataclass
class Study:
    root: Path                      # the folder the runs were found below
    runs: list[Run]
    grouping: Grouping
    base: Configuration             # the baseline configuration
    baseline_spec: str | None       # report.baseline as given (None: the first configuration)
    tables: list[Table]             # every table, in the order report.md shows them
    comparisons: dict[str, dict]    # metric -> configuration label -> comparison with the base
    metrics: tuple[str, ...]        # the per-case metrics compared, the primary one first
    figures: dict[str, str]         # file name -> caption
    notes: list[str]                # warnings, each once

    @property
    def by_name(self) -> dict[str, Table]:
        return {t.name: t for t in self.tables}

    def states(self) -> str:
        """`3 finished, 1 failed`: how many runs ended in each state."""
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.state] = counts.get(r.state, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    def baseline_line(self) -> str:
        return f"Baseline: **{self.base.label}**" + (
            " (chosen with `report.baseline`)." if self.baseline_spec else
            " (the first configuration; choose another with `report.baseline=<setting=value>`).")

    def incomplete(self) -> Table | None:
        """The runs that did not finish (not in the other tables), None when every run did."""
        problems = [r for r in self.runs if r.state != "finished"]
        if not problems:
            return None
        rows = [[f"`{r.path.relative_to(self.root) if self.root in r.path.parents else r.path}`",
                 r.state, str(r.epochs), (r.error or "").replace("\n", " ")[:300]]
                for r in problems]
        return Table("incomplete", "Incomplete and failed runs",
                     ["run", "state", "epochs done", "error"], rows,
                     "Not in the tables above. Re-run the sweep command to resume interrupted "
                     "runs.")
