"""`segbench download dataset=<name>`: fetch a dataset into dataset.root, in the layout its
loader reads.

Kvasir-Instrument comes from its publisher's URL: streamed with a progress bar into
<root>/<archive>.part, resumed with an HTTP Range request after an interruption, checked (the
byte count, the SHA-256 when one is configured or was recorded by an earlier download, and the
zip's own CRCs) and unpacked. LGG and lung CT come from Kaggle: with the Kaggle API installed
and credentialed they are downloaded with it; otherwise the command prints the manual steps.
Offline it fails within seconds (a short connect timeout, no retries) with those steps.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import socket
import tarfile
import threading
import zipfile
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from omegaconf import DictConfig
from tqdm.auto import tqdm

from segbench import SegbenchError, __version__
from segbench.data import dataset_module

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TARBALLS = (".tar.gz", ".tgz", ".tar")


class DownloadError(SegbenchError):
    pass


def _reachable(url: str, timeout: float) -> None:
    """Resolve and connect to the URL's host within `timeout` seconds, or raise DownloadError.

    Name resolution runs in a daemon thread because getaddrinfo ignores socket timeouts: a
    machine without DNS would otherwise hang for the resolver's own (much longer) timeout.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"{url} is not an http(s) URL")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found: dict = {}

    def resolve():
        try:
            found["addr"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            found["error"] = err

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise DownloadError(f"cannot resolve {host} within {timeout:g}s (no network?)")
    if "error" in found:
        raise DownloadError(f"cannot resolve {host}: {found['error']} (no network?)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise DownloadError(f"cannot connect to {host}:{port}: {err} (no network?)") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, *, timeout: float = 10.0, progress: bool | None = None) -> Path:
    """Download url to dest through dest.part, resuming a .part left by an interrupted run."""
    _reachable(url, timeout)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"segbench/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and start:  # the .part already holds the whole file
            part.replace(dest)
            return dest
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (URLError, OSError) as err:
        raise DownloadError(f"{url}: {getattr(err, 'reason', err)}") from None
    with response:
        resumed = start > 0 and response.status == 206
        if start and not resumed:
            log.info("the server does not resume downloads: starting %s again", dest.name)
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        if resumed:
            log.info("resuming %s at %.1f MB", dest.name, start / 1e6)
        received = start
        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=dest.name,
                disable=None if progress is None else not progress) as bar:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, HTTPException) as err:
                raise DownloadError(
                    f"the download of {url} broke off at {received / 1e6:.1f} MB ({err}); run the "
                    "same command again to resume it") from None
    if total is not None and received != total:
        raise DownloadError(f"the download of {url} stopped at {received} of {total} bytes; run "
                            "the same command again to resume it")
    part.replace(dest)
    return dest


def check_archive(archive: Path, expected: str | None) -> str:
    """The archive's SHA-256, checked against `expected` or, without one, against the checksum
    an earlier download recorded beside it (<archive>.sha256), which it records otherwise."""
    digest = sha256_of(archive)
    record = archive.with_name(archive.name + ".sha256")
    if not expected and record.is_file():
        expected = record.read_text().split()[0]
    if expected and digest != expected.lower():
        archive.unlink()
        raise DownloadError(
            f"{archive.name} has SHA-256 {digest}, expected {expected}: the download is corrupt "
            "or the publisher changed the file. It was deleted; run the command again (or set "
            "dataset.download.sha256 to the publisher's new checksum)")
    if not record.is_file():
        record.write_text(f"{digest}  {archive.name}\n")
    if expected:
        log.info("%s: SHA-256 %s matches", archive.name, digest)
    else:
        log.warning("%s: no reference checksum configured; its SHA-256 is %s (recorded in %s). "
                    "Pin it with dataset.download.sha256=%s", archive.name, digest, record.name,
                    digest)
    return digest


def _extract_tar(path: Path, dest: Path) -> None:
    try:
        with tarfile.open(path) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths and ../ members
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DownloadError(f"cannot extract {path}: {err}. The file is corrupt: delete it and "
                            "download again") from None


def _extract_zip(path: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # every member's CRC
            if bad is not None:
                raise DownloadError(f"{path}: {bad} fails its CRC check; delete {path} and "
                                    "download again")
            z.extractall(dest)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DownloadError(f"cannot extract {path}: {err}. The file is corrupt: delete it and "
                            "download again") from None


def _archive_stem(name: str) -> str | None:
    for suffix in (*TARBALLS, ".zip"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def extract_nested(folder: Path, *, keep: bool = False, only_missing: bool = False) -> None:
    """Unpack the tarballs and zips inside an unpacked archive where they lie, as
    `tar -xzf X -C <its folder>` would; with only_missing, those whose folder is not there yet."""
    for path in sorted(folder.rglob("*")):
        stem = _archive_stem(path.name)
        if stem is None or not path.is_file():
            continue
        if only_missing and (path.parent / stem).exists():
            continue
        log.info("unpacking %s", path)
        if path.suffix == ".zip":
            _extract_zip(path, path.parent)
        else:
            _extract_tar(path, path.parent)
        if not keep:
            path.unlink()


def unpack_kvasir(archive: Path, root: Path, keep: bool) -> None:
    """kvasir-instrument.zip -> kvasir-instrument/{images,masks}.tar.gz, train.txt, test.txt ->
    <root>/images, <root>/masks, <root>/train.txt, <root>/test.txt."""
    tmp = root / ".segbench-unpack"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _extract_zip(archive, tmp)
        extract_nested(tmp)
        found = [p for p in tmp.rglob("images") if p.is_dir() and (p.parent / "masks").is_dir()]
        if not found:
            listing = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))[:20]
            raise DownloadError(f"{archive.name} does not hold images/ and masks/ folders (it "
                                f"holds {listing}); the publisher may have changed the archive")
        top = found[0].parent
        for item in top.iterdir():
            target = root / item.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(item), str(target))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep:
        archive.unlink()


def manual_steps(name: str, cfg: DictConfig, root: Path) -> str:
    source = cfg.get("download") or {}
    if source.get("kaggle"):
        slug, page = source["kaggle"], source.get("page", f"https://www.kaggle.com/datasets/{source['kaggle']}")
        archive = slug.split("/")[-1] + ".zip"
        return "\n".join([
            f"Get {name} by hand (a free Kaggle account is needed):",
            f"  1. open {page} and click Download (or: kaggle datasets download -d {slug})",
            f"  2. unzip {archive} -d {root}",
            f"  3. segbench verify dataset={name} dataset.root={root}",
            f"Or install the Kaggle API (pip install kaggle), put your API token in "
            f"~/.kaggle/kaggle.json, and run `segbench download dataset={name}` again.",
        ])
    if source.get("url"):
        archive = Path(urlsplit(source["url"]).path).name
        return "\n".join([
            f"Get {name} by hand:",
            f"  1. download {source['url']}"
            + (f" (see {source['page']})" if source.get("page") else ""),
            f"  2. save it as {root / archive}",
            f"  3. segbench download dataset={name} dataset.root={root}   (checks and unpacks it)",
            f"  4. segbench verify dataset={name} dataset.root={root}",
        ])
    return f"{name} has nothing to download."


def already_there(cfg: DictConfig) -> int:
    """Image/mask pairs the dataset's loader finds now (0 when it finds none)."""
    try:
        pools = dataset_module(cfg.dataset).list_splits(cfg.dataset)
    except SegbenchError:
        return 0
    return sum(len(v) for v in pools.values())


def _kaggle_api():
    """The authenticated Kaggle API, or a DownloadError saying why there is none."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # optional extra
    except ImportError:
        raise DownloadError("the Kaggle API is not installed (pip install kaggle)") from None
    except Exception as err:  # kaggle < 1.7 authenticates on import and raises OSError
        raise DownloadError(f"the Kaggle API has no credentials: {err}") from None
    api = KaggleApi()
    try:
        api.authenticate()
    except Exception as err:
        raise DownloadError(f"the Kaggle API has no credentials: {err}") from None
    return api


def kaggle_download(slug: str, root: Path, timeout: float) -> None:
    api = _kaggle_api()
    _reachable("https://www.kaggle.com", timeout)
    log.info("downloading kaggle dataset %s into %s", slug, root)
    try:
        api.dataset_download_files(slug, path=str(root), unzip=True, quiet=False)
    except Exception as err:  # the client's own HTTP and API errors
        raise DownloadError(f"the Kaggle download of {slug} failed: {err}") from None
    # Kaggle's archives may hold zips of their own (lung CT's 2d_images.zip): unpack the ones
    # whose folder is missing, and leave every file the user had there alone.
    extract_nested(root, keep=True, only_missing=True)
