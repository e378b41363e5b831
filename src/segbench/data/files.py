"""Finding a dataset's files on disk: its root, image/mask pairs matched by name, id lists.

Shared by the dataset modules so that every dataset reports a missing root, unpaired files and
unknown ids the same way (`dataset.on_unpaired: error | skip`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from segbench import SegbenchError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_LISTED = 10  # names an error message lists before "... and N more"


class UnpairedFiles(SegbenchError):
    """Images without a mask or masks without an image (`names` holds the files)."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


def listing(names: Iterable[str], limit: int = MAX_LISTED) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def require_root(root: str | Path, dataset: str, layout: str, fix: str) -> Path:
    """The dataset root as a Path, or an error naming the expected layout and how to get it."""
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise SegbenchError(
            f"dataset {dataset}: the root {path} does not exist. Expected layout:\n{layout}\n{fix}"
            " (eval or ensemble of a trained run: data_root=<the folder>)"
        )
    return path


def find_layout(root: Path, marker: str, nested: Iterable[str] = ()) -> Path | None:
    """The folder holding `marker`: root itself or one of the `nested` folders publishers wrap
    their archives in (e.g. kvasir-instrument/ inside kvasir-instrument.zip)."""
    for folder in (root, *(root / n for n in nested)):
        if (folder / marker).exists():
            return folder
    return None


def files_by_stem(folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES,
                  strip: str = "") -> dict[str, Path]:
    """{stem: path} of the image files directly in `folder` (hidden files ignored).

    `strip` removes a suffix from stems (masks named `<id>_mask.png`). Two files with one stem
    (a.png and a.jpg) are ambiguous and an error.
    """
    suffixes = {s.lower() for s in suffixes}
    out: dict[str, Path] = {}
    clashes = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        stem = path.stem
        if strip:
            if not stem.endswith(strip):
                continue
            stem = stem[: -len(strip)]
        if stem in out:
            clashes.append(f"{out[stem].name}/{path.name}")
        out[stem] = path
    if clashes:
        raise SegbenchError(
            f"{folder}: several files share a name: {listing(clashes)}. Keep one file per image"
        )
    return out


def pair(images: dict[str, Path], masks: dict[str, Path], on_unpaired: str,
         where: str) -> list[tuple[str, Path, Path]]:
    """(id, image, mask) for every id with both files, sorted by id.

    An image without a mask (or the reverse) is an error listing the files, or, with
    on_unpaired=skip, a warning with their count.
    """
    if on_unpaired not in ("error", "skip"):
        raise SegbenchError(f"dataset.on_unpaired={on_unpaired!r}; use error or skip")
    lonely = [str(images[k]) for k in images.keys() - masks.keys()]
    lonely += [str(masks[k]) for k in masks.keys() - images.keys()]
    if lonely:
        no_mask = len(images.keys() - masks.keys())
        no_image = len(masks.keys() - images.keys())
        what = f"{no_mask} image(s) without a mask and {no_image} mask(s) without an image"
        if on_unpaired == "error":
            names = sorted(Path(p).name for p in lonely)
            raise UnpairedFiles(
                f"{where}: {what}: {listing(names)}. Add the missing files, or set "
                "dataset.on_unpaired=skip to leave them out", sorted(lonely))
        log.warning("%s: skipping %s (dataset.on_unpaired=skip)", where, what)
    return [(k, images[k], masks[k]) for k in sorted(images.keys() & masks.keys())]


def read_ids(path: Path) -> list[str]:
    """Ids from a split file: one per line, blank lines ignored, extensions dropped."""
    try:
        # utf-8-sig: a byte-order mark (Windows editors) is not part of the first id; splitlines
        # takes \r\n and \r line ends too.
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SegbenchError(f"cannot read the split file {path}: {err}") from None
    ids = [line.strip() for line in lines if line.strip()]
    ids = [i[: -len(Path(i).suffix)] if Path(i).suffix.lower() in IMAGE_SUFFIXES else i
           for i in ids]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise SegbenchError(f"{path} lists ids more than once: {listing(dupes)}")
    return ids


def assign(pairs: list[tuple[str, Path, Path]], lists: dict[str, list[str]],
           where: str) -> dict[str, list[tuple[str, Path, Path]]]:
    """Pairs grouped by the split files' ids ({"train": [...], "test": [...]}), in list order.

    Ids listed without files (a partial copy) and files no list names are left out with a
    warning; an id in two lists is an error.
    """
    by_id = {p[0]: p for p in pairs}
    owner: dict[str, str] = {}
    for name, ids in lists.items():
        for i in ids:
            if i in owner:
                raise SegbenchError(f"{where}: {i} is listed for both {owner[i]} and {name}; "
                                    "an image belongs to one split")
            owner[i] = name
    missing = [i for i in owner if i not in by_id]
    if missing:
        log.warning("%s: %d of the %d listed ids have no image/mask files (a partial copy?); "
                    "left out: %s", where, len(missing), len(owner), listing(missing, 5))
    unlisted = [i for i in by_id if i not in owner]
    if unlisted:
        log.warning("%s: %d image/mask pair(s) are in no split file; left out: %s", where,
                    len(unlisted), listing(unlisted, 5))
    return {name: [by_id[i] for i in ids if i in by_id] for name, ids in lists.items()}
