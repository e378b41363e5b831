"""Tables of a report, each written three ways: Markdown (in report.md), CSV and LaTeX (booktabs)
under report/tables/. A table carries the one line that says how its numbers were made; best
values are bold in all three (CSV: a `best` column lists them)."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from segbench.atomic import write_atomic


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def best_value(values: list[float], higher: bool | None) -> float | None:
    ok = [v for v in values if not math.isnan(v)]
    if higher is None or len(set(ok)) < 2:  # nothing to rank when all are equal
        return None
    return max(ok) if higher else min(ok)


@dataclass
class Table:
    name: str                                   # file stem under tables/
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""                              # how the numbers were made (one line)
    bold: set[tuple[int, int]] = field(default_factory=set)   # (row, column)
    csv_header: list[str] | None = None         # numbers for CSV, when they differ from the text
    csv_rows: list[list] | None = None

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        for i, row in enumerate(self.rows):
            cells = [f"**{c}**" if (i, j) in self.bold else str(c) for j, c in enumerate(row)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if self.note:
            lines += ["", f"*{self.note}*"]
        return "\n".join(lines)

    def latex(self) -> str:
        align = "".join("r" if _numeric(self.rows, j) else "l" for j in range(len(self.header)))
        body = []
        for i, row in enumerate(self.rows):
            cells = [latex_escape(str(c)) for c in row]
            cells = [f"\\textbf{{{c}}}" if (i, j) in self.bold else c for j, c in enumerate(cells)]
            body.append(" & ".join(cells) + r" \\")
        caption = latex_escape(self.title + (f". {self.note}" if self.note else ""))
        return "\n".join([
            f"% segbench report: {self.title} (needs \\usepackage{{booktabs}})",
            r"\begin{table}[t]", r"\centering", f"\\caption{{{caption}}}",
            f"\\label{{tab:{self.name}}}", f"\\begin{{tabular}}{{{align}}}", r"\toprule",
            " & ".join(latex_escape(h) for h in self.header) + r" \\", r"\midrule", *body,
            r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{self.name}.tex", self.latex())
        header = self.csv_header or self.header
        rows = self.csv_rows if self.csv_rows is not None else self.rows
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        best = self.csv_rows is not None and self.bold
        w.writerow([*header, *(["best"] if best else [])])
        for i, row in enumerate(rows):
            marks = [self.header[j] for (r, j) in sorted(self.bold) if r == i]
            w.writerow([*row, *([";".join(marks)] if best else [])])
        write_atomic(folder / f"{self.name}.csv", text.getvalue())


_NUMBER = re.compile(r"^(-|[<>]?[-+]?\d[\d.,]*( ± [\d.]+)?|\[[-\d., ]+\]|\d+ vs \d+)$")


def _numeric(rows: list[list[str]], j: int) -> bool:
    """Whether column j holds numbers only (right-aligned in LaTeX)."""
    values = [str(r[j]) for r in rows if j < len(r)]
    return bool(values) and all(_NUMBER.match(v) for v in values)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "±": r"$\pm$", "Δ": r"$\Delta$", "<": r"$<$", ">": r"$>$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)
