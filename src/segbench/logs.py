"""Logging helpers used by the log configuration (configs/hydra/job_logging/segbench.yaml)."""

from __future__ import annotations

import logging

# Messages libraries log once in a while that say nothing about the run: (logger prefix, text).
NOISE = (
    ("matplotlib", "building the font cache"),
    ("matplotlib", "findfont"),
)


class QuietLibraries(logging.Filter):
    """Drops the known one-off chatter of libraries (below ERROR): a run's log is about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        return not any(record.name.startswith(name) and text in message for name, text in NOISE)
