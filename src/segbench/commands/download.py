"""`segbench download dataset=<name>`: fetch a dataset into dataset.root (resumable; Kaggle
datasets through the Kaggle API or printed manual steps; fails within seconds offline)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from segbench import SegbenchError

# segbench.data's modules (torch, albumentations) load inside the functions that use them, so that
# `segbench --help` and argument errors answer at once.

CONFIG = "download"
HELP = "fetch a dataset into dataset.root: download dataset=kvasir_instrument|lgg_mri|lung_ct"

log = logging.getLogger("segbench.download")


def run(cfg) -> None:
    from segbench.data import DATASETS
    from segbench.data.download import (
        DownloadError,
        already_there,
        check_archive,
        fetch,
        kaggle_download,
        manual_steps,
        unpack_kvasir,
    )

    name = cfg.dataset.name
    source = cfg.dataset.get("download")
    root = Path(str(cfg.dataset.get("root", "."))).expanduser()
    if not source:
        choices = "|".join(n for n in DATASETS.names() if n not in ("synthetic", "folder"))
        raise SegbenchError(f"dataset {name} has nothing to download"
                            + (" (it is generated on first use)" if name == "synthetic" else
                               " (point dataset.root at your images/ and masks/ folders)")
                            + f"; name one that has: segbench download dataset={choices}")
    if not cfg.force:
        found = already_there(cfg)
        if found:
            log.info("%s is already in %s (%d image/mask pairs); force=true downloads it again. "
                     "Check it with: segbench verify dataset=%s dataset.root=%s", name, root, found,
                     name, root)
            return
    root.mkdir(parents=True, exist_ok=True)
    timeout = float(cfg.timeout)
    try:
        if source.get("url"):
            archive = root / Path(urlsplit(source.url).path).name
            if not archive.is_file() or cfg.force:
                log.info("downloading %s to %s", source.url, archive)
                fetch(source.url, archive, timeout=timeout)
            else:
                log.info("using the archive already in %s", archive)
            check_archive(archive, source.get("sha256"))
            unpack_kvasir(archive, root, keep=bool(cfg.keep_archive))
        elif source.get("kaggle"):
            kaggle_download(source.kaggle, root, timeout)
        else:
            raise SegbenchError(f"dataset.download of {name} names neither a url nor a kaggle "
                                "dataset")
    except DownloadError as err:
        steps = manual_steps(name, cfg.dataset, root)
        raise SegbenchError(f"cannot download {name}: {err}\n{steps}") from None
    found = already_there(cfg)
    if not found:
        raise SegbenchError(f"{name} was downloaded into {root} but its loader finds no image/mask "
                            f"pairs there; `segbench verify dataset={name} dataset.root={root}` "
                            "says why")
    log.info("%s is ready in %s: %d image/mask pairs. Check it with: segbench verify dataset=%s "
             "dataset.root=%s", name, root, found, name, root)
