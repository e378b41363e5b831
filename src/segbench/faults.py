"""Fault injection for tests: stop or fail this process at a named point of a run.

Off unless the environment variable SEGBENCH_FAULT is set (segbench never sets it; the fault
tests in tests/faults/ do). Its value is a comma-separated list of rules `<point>:<action>[@n]`:
the rule fires the n-th time (default: the first time) the process reaches that point.

Points (each is one call of `point()` in the code):
  write:<file name>     inside an atomic write of that file, at its first write (the temporary
                        file exists and is still empty or partial), e.g. write:last.pt
  renamed:<file name>   right after an atomic write renamed the file into place and synced its
                        folder, e.g. renamed:last.pt, renamed:metrics.json
  train_step            after a training step (before the next batch is drawn)
Actions:
  kill                  SIGKILL this process (as `kill -9`, the OOM killer or a lost node do)
  interrupt             send SIGINT to this process (as Ctrl-C does)
  terminate             send SIGTERM to this process (as `kill`, a scheduler or a shutdown do)
  enospc, edquot, eacces, erofs, eio
                        raise that OSError, as the operating system does when a write fails

Example: SEGBENCH_FAULT=renamed:last.pt:kill@3 kills a run right after its third last.pt
(epoch 2's: a new run writes last.pt once before its first epoch) is in place.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "SEGBENCH_FAULT"
ERRORS = {"enospc": errno.ENOSPC, "edquot": errno.EDQUOT, "eacces": errno.EACCES,
          "erofs": errno.EROFS, "eio": errno.EIO}
_reached: Counter = Counter()


def reset() -> None:
    """Count from zero again (tests that run several commands in one process)."""
    _reached.clear()


def point(name: str, path: str | os.PathLike | None = None) -> None:
    """Fire the rules of SEGBENCH_FAULT that name `name` and are due (a no-op when unset)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for rule in (r.strip() for r in spec.split(",") if r.strip()):
        where, _, action = rule.rpartition(":")
        action, _, nth = action.partition("@")
        if where != name:
            continue
        _reached[rule] += 1
        if _reached[rule] == int(nth or 1):
            _fire(action, name, path)


def _fire(action: str, name: str, path) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
    elif action == "terminate":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action in ERRORS:
        code = ERRORS[action]
        raise OSError(code, os.strerror(code), None if path is None else str(path))
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} at {name} "
                         f"(use kill, interrupt, terminate or {', '.join(ERRORS)})")
