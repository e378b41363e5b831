"""Atomic file writes: a crash or kill at any moment leaves the old file or the new one.

The data goes to a temporary file in the same folder (`.<name>.tmp<pid>`), is flushed to disk,
and is renamed over the old file; the folder is then synced so that the rename itself survives a
power loss. A temporary file left by a killed process is removed by `remove_stale_temporaries()`
(`segbench train` runs it on the run directory when it starts).

A write that fails in the operating system (disk full, permission denied, read-only file system)
raises that OSError, with the file name, even where the library doing the writing (torch.save,
matplotlib, NumPy) would have replaced it by an error of its own; `os_error_message()` turns the
common ones into one line that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from segbench import faults

TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


class _Recorder:
    """A binary file that remembers the OSError of a failed write (libraries such as torch.save
    turn it into their own RuntimeError) and holds the `write:<name>` fault point."""

    def __init__(self, f: BinaryIO, name: str):
        self._f, self._name, self._first = f, name, True
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            if self._first:
                self._first = False
                faults.point(f"write:{self._name}", self._f.name)
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._f, attr)


def write_atomic(path: Path, data: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Replace `path` by `data` (bytes, text, or a function that writes into a binary file)."""
    path = Path(path)
    tmp = temporary_name(path)
    recorder = None
    try:
        with open(tmp, "wb") as f:
            recorder = _Recorder(f, path.name)
            if callable(data):
                data(cast(BinaryIO, recorder))  # a binary file to its writer (see _Recorder)
            else:
                recorder.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        # The OS error, named by the file being replaced (not its temporary), also where a
        # library raised an error of its own for it (older torch: "unexpected pos").
        cause = recorder.error if recorder is not None and recorder.error is not None else err
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror, str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    faults.point(f"renamed:{path.name}", path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for writers that need a file name (ONNX, TorchScript,
    OpenCV); renamed over `path` when the block ends without an error, removed otherwise."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    faults.point(f"renamed:{path.name}", path)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where a folder cannot be opened or synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fresh_dir(path: Path, limit: int = 1000) -> Path:
    """Create and return a folder no other command is using: `path` itself when it does not
    exist, else `path-2`, `path-3`, ... (mkdir fails where the folder exists, so two commands
    started in the same second can never both get the same one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, limit + 1):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"{limit} folders named {path.name}-<n> exist already",
                          str(path))


def holds_files(folder: Path, ignore: tuple[str, ...] = ()) -> bool:
    """Whether `folder` exists and holds anything but `ignore` (what a command must not mix its
    output into; its own appended log does not count)."""
    try:
        return any(p.name not in ignore for p in Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes in `folder` whose process is gone (a kill
    during a write leaves one, as large as the file being written); returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = TEMPORARY.match(p.name)
        if m and p.is_file() and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


# What to do about the OS errors a user can fix: errno -> (what happened, what to do).
KNOWN_OS_ERRORS = {
    errno.ENOSPC: ("no space left on the disk", "free some space or write elsewhere"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space or write elsewhere"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("permission denied", "choose a folder you can write to"),
    errno.EROFS: ("the file system is read-only", "choose a folder on a writable disk"),
}


def os_error_message(err: BaseException, where: str = "") -> str | None:
    """One line for a known OS error (disk full, quota, permission, read-only), naming the file
    and the fix (`where`: how to write elsewhere, e.g. `hydra.run.dir=<dir>`); None otherwise."""
    if not isinstance(err, OSError) or err.errno not in KNOWN_OS_ERRORS:
        return None
    what, fix = KNOWN_OS_ERRORS[err.errno]
    name = f" writing {err.filename}" if err.filename else ""
    return (f"{what}{name} ([Errno {err.errno}] {err.strerror}): {fix}"
            + (f" ({where})" if where else ""))
