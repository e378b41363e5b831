"""`segbench download` without the network: a local HTTP server (loopback only) plays the
publisher, with Range support, broken connections and a server that never answers."""

from __future__ import annotations

import hashlib
import io
import socket
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import run_cli
from datasets_util import compose_cfg
from segbench import SegbenchError
from segbench.commands import download as download_command
from segbench.data import download, list_splits


class Publisher(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        server = self.server
        server.requests.append(self.headers.get("Range"))
        data = server.payload
        start = 0
        if self.headers.get("Range") and server.ranges:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.break_after is not None:  # the connection drops mid-file
            self.wfile.write(body[: server.break_after])
            server.break_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def publisher():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Publisher)
    server.payload, server.requests, server.ranges, server.break_after = b"", [], True, None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url_of(server, name="kvasir-instrument.zip"):
    return f"http://127.0.0.1:{server.server_address[1]}/downloads/{name}"


@pytest.fixture(scope="module")
def archive(kvasir_stand_in) -> bytes:
    """kvasir-instrument.zip as the publisher ships it: a kvasir-instrument/ folder holding
    images.tar.gz, masks.tar.gz, train.txt and test.txt (built from the stand-in)."""
    src = kvasir_stand_in.root
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for part in ("images", "masks"):
            tarball = io.BytesIO()
            with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
                tar.add(src / part, arcname=part)
            z.writestr(f"kvasir-instrument/{part}.tar.gz", tarball.getvalue())
        for name in ("train.txt", "test.txt"):
            z.write(src / name, f"kvasir-instrument/{name}")
    return buffer.getvalue()


def download_cfg(root, url, *overrides):
    return compose_cfg("dataset=kvasir_instrument", f"dataset.root={root}",
                       f"dataset.download.url={url}", "timeout=5", *overrides, config="download")


def test_download_checks_and_unpacks_into_the_layout(tmp_path, publisher, archive, kvasir_stand_in):
    publisher.payload = archive
    root = tmp_path / "data" / "kvasir_instrument"
    cfg = download_cfg(root, url_of(publisher))
    download_command.run(cfg)
    assert sorted(p.name for p in root.iterdir()) == [
        "images", "kvasir-instrument.zip.sha256", "masks", "test.txt", "train.txt"]
    assert sorted(p.stem for p in (root / "images").glob("*.jpg")) == list(kvasir_stand_in.ids)
    digest = hashlib.sha256(publisher.payload).hexdigest()
    assert (root / "kvasir-instrument.zip.sha256").read_text().split()[0] == digest
    splits = list_splits(compose_cfg("dataset=kvasir_instrument", f"dataset.root={root}"))
    assert [s.id for s in splits["test"]] == list(kvasir_stand_in.split_files["test"])
    # Run again: the data is there, nothing is fetched.
    download_command.run(cfg)
    assert publisher.requests == [None]


def test_interrupted_download_resumes(tmp_path, publisher, archive, kvasir_stand_in):
    publisher.payload = archive
    publisher.break_after = len(publisher.payload) // 3
    root = tmp_path / "kvasir"
    cfg = download_cfg(root, url_of(publisher))
    with pytest.raises(SegbenchError, match=r"run the same command again to resume"):
        download_command.run(cfg)
    part = root / "kvasir-instrument.zip.part"
    assert part.stat().st_size == len(publisher.payload) // 3
    download_command.run(cfg)  # the same command again
    assert publisher.requests == [None, f"bytes={len(publisher.payload) // 3}-"]
    assert not part.exists()
    assert sorted(p.stem for p in (root / "masks").glob("*.png")) == list(kvasir_stand_in.ids)


def test_server_without_ranges_starts_again(tmp_path, publisher, archive):
    publisher.payload = archive
    publisher.ranges = False
    root = tmp_path / "kvasir"
    root.mkdir()
    (root / "kvasir-instrument.zip.part").write_bytes(b"stale bytes of another try")
    download_command.run(download_cfg(root, url_of(publisher)))
    assert (root / "kvasir-instrument.zip.sha256").read_text().split()[0] == \
        hashlib.sha256(publisher.payload).hexdigest()


def test_checksum_mismatch_deletes_the_archive(tmp_path, publisher, archive):
    publisher.payload = archive
    root = tmp_path / "kvasir"
    cfg = download_cfg(root, url_of(publisher), "dataset.download.sha256=" + "0" * 64,
                       "keep_archive=true")
    with pytest.raises(SegbenchError, match=r"has SHA-256 [0-9a-f]{64}, expected 0{64}") as err:
        download_command.run(cfg)
    assert "Get kvasir_instrument by hand" in str(err.value)
    assert not (root / "kvasir-instrument.zip").exists() and not (root / "images").exists()
    # The right checksum passes, and keep_archive keeps the zip.
    good = hashlib.sha256(publisher.payload).hexdigest()
    download_command.run(download_cfg(root, url_of(publisher), f"dataset.download.sha256={good}",
                                        "keep_archive=true"))
    assert (root / "kvasir-instrument.zip").is_file() and (root / "images").is_dir()


def test_an_archive_put_there_by_hand_is_unpacked_without_network(tmp_path, archive,
                                                                   kvasir_stand_in):
    root = tmp_path / "kvasir"
    root.mkdir()
    (root / "kvasir-instrument.zip").write_bytes(archive)
    download_command.run(download_cfg(root, "http://127.0.0.1:9/kvasir-instrument.zip"))
    assert len(list_splits(compose_cfg("dataset=kvasir_instrument", f"dataset.root={root}"))[
        "test"]) == len(kvasir_stand_in.split_files["test"])


def test_corrupt_archive_is_refused(tmp_path):
    root = tmp_path / "kvasir"
    root.mkdir()
    (root / "kvasir-instrument.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SegbenchError, match=r"cannot extract .*corrupt"):
        download_command.run(download_cfg(root, "http://127.0.0.1:9/kvasir-instrument.zip"))


def test_a_server_that_never_answers_times_out(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # connections are accepted by the kernel, never answered
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/kvasir-instrument.zip"
        started = time.monotonic()
        with pytest.raises(SegbenchError, match=r"cannot download kvasir_instrument.*timed out"):
            download_command.run(download_cfg(tmp_path / "kvasir", url, "timeout=1"))
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_cli_offline_fails_fast_with_manual_steps(tmp_path):
    root = tmp_path / "kvasir"
    started = time.monotonic()
    proc = run_cli("download", "dataset=kvasir_instrument", f"dataset.root={root}",
                   "dataset.download.url=http://127.0.0.1:9/downloads/kvasir-instrument.zip",
                   "timeout=2", cwd=tmp_path, check=False)
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "cannot connect to 127.0.0.1:9" in out
    assert "download http://127.0.0.1:9/downloads/kvasir-instrument.zip" in out
    assert f"save it as {root / 'kvasir-instrument.zip'}" in out
    assert elapsed < 30  # the interpreter's start included; the connection fails at once


def test_kaggle_datasets_without_the_api_print_manual_steps(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", None)  # not installed
    root = tmp_path / "lgg"
    cfg = compose_cfg("dataset=lgg_mri", f"dataset.root={root}", config="download")
    with pytest.raises(SegbenchError) as err:
        download_command.run(cfg)
    message = str(err.value)
    assert "the Kaggle API is not installed" in message
    assert "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation" in message
    assert f"unzip lgg-mri-segmentation.zip -d {root}" in message
    assert "kaggle.json" in message


def test_kaggle_without_credentials(tmp_path, monkeypatch):
    fake = tmp_path / "fake_kaggle" / "kaggle"
    (fake / "api").mkdir(parents=True)
    (fake / "__init__.py").write_text("raise OSError('Could not find kaggle.json')\n")
    (fake / "api" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(fake.parent))
    for name in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    cfg = compose_cfg("dataset=lung_ct", f"dataset.root={tmp_path / 'lung'}", config="download")
    with pytest.raises(SegbenchError, match=r"no credentials: Could not find kaggle\.json"):
        download_command.run(cfg)


def test_kaggle_download_unpacks_nested_zips(tmp_path, monkeypatch, lung_stand_in):
    class FakeApi:
        def dataset_download_files(self, slug, path, unzip, quiet):
            assert slug == "kmader/finding-lungs-in-ct-data" and unzip
            for part in ("2d_images", "2d_masks"):  # the archive's own zips, not unpacked
                with zipfile.ZipFile(Path(path) / f"{part}.zip", "w") as z:
                    for tif in sorted((lung_stand_in.root / part).glob("*.tif"))[:6]:
                        z.write(tif, f"{part}/{tif.name}")

    monkeypatch.setattr(download, "_kaggle_api", FakeApi)
    monkeypatch.setattr(download, "_reachable", lambda url, timeout: None)
    root = tmp_path / "lung"
    download_command.run(compose_cfg("dataset=lung_ct", f"dataset.root={root}",
                                       config="download"))
    assert len(list((root / "2d_images").glob("*.tif"))) == 6
    assert (root / "2d_images.zip").is_file()  # the user's files are left alone
    splits = list_splits(compose_cfg("dataset=lung_ct", f"dataset.root={root}"))
    assert sum(len(v) for v in splits.values()) == 6


@pytest.mark.parametrize("name", ["synthetic", "folder"])
def test_nothing_to_download(tmp_path, name):
    with pytest.raises(SegbenchError, match="has nothing to download"):
        download_command.run(compose_cfg(f"dataset={name}", config="download"))
