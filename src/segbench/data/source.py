"""What a dataset module hands the shared data pipeline: samples, split by the dataset's rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    id: str                   # unique within the dataset; what per_case.csv and split.json name
    image: Path
    mask: Path
    group: str | None = None  # patient / volume: splits never cut a group, metrics pool over it
