"""Shared test helpers: an isolated cache per session, offline hubs, the real CLI (in this
process, or in a subprocess for the end-to-end tests marked e2e), format-faithful stand-ins of
the real datasets (written once per session), and the `shared_data` layer: tests on the real
samples in ../shared/data, skipped where it is absent."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from segbench.data import fixtures

ROOT = Path(__file__).resolve().parents[1]
# Real data samples beside the repository on our machines only (never in a user's clone).
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_SKIP = ("../shared/data not found: the real-sample layer runs only beside our shared data"
               f" ({SHARED_DATA})")

# The smallest settings that still run the real training loop end to end on CPU.
TINY = [
    "dataset.num_train=24",
    "dataset.num_test=8",
    "dataset.image_size=64",
    "resolution=64",
    "model.encoder=resnet18",
    "model.encoder_depth=3",
    "model.decoder_channels=[32,16,8]",
    "trainer.max_epochs=2",
    "trainer.batch_size=8",
    "augmentation=none",
    "logger=none",
    "eval.latency=false",
    "eval.num_predictions=2",
]


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores (torch's default, all of them
    in every worker, makes the workers wait on each other)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # and the CLI's subprocesses
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """`shared_data` tests skip, at collection, where the real samples are not beside the repo."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=SHARED_SKIP)
    for item in items:
        if item.get_closest_marker("shared_data"):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    """Every test (and every CLI subprocess) uses a fresh cache and never reaches a model hub."""
    cache = tmp_path_factory.mktemp("segbench-cache")
    os.environ["SEGBENCH_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield cache


def run_cli(*args: str, cwd: Path, check: bool = True, timeout: float = 600,
            env: dict | None = None):
    """`segbench <args>` in `cwd`, in this process (the CLI's own entry point, without paying for
    a Python start-up); returns a CompletedProcess with the exit code and the captured output.
    An uncaught exception counts as a crash: exit code 1, its traceback in stderr."""
    from segbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    here = os.getcwd()
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exit_:
                code = (exit_.code if isinstance(exit_.code, int)
                        else (0 if exit_.code is None else 1))
            except Exception:
                code = 1
                traceback.print_exc(file=err)
    finally:
        os.chdir(here)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        logging.shutdown()  # close the run's log file handlers (Hydra opens new ones per job)
        logging.getLogger().handlers.clear()
    proc = subprocess.CompletedProcess(["segbench", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"segbench {' '.join(args)} exited {code}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def ctrl_c_at_test(monkeypatch, n: int = 2) -> None:
    """Ctrl-C (KeyboardInterrupt) in the n-th final test of a run in this process (the n-th job
    of an in-process sweep), as a user stopping a sweep half-way would."""
    import segbench.engine.trainer as trainer

    real, calls = trainer.test_best, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "test_best", interrupted)


def run_subprocess(*args: str, cwd: Path, check: bool = True, timeout: float = 600,
                   env: dict | None = None):
    """`python -m segbench <args>` in a new process: for the end-to-end tests (marked e2e) of
    what only a real process shows (argv, exit codes, signals, start-up)."""
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"segbench {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def run_dirs(root: Path) -> list[Path]:
    """Training run directories below root (those holding a config.yaml and a split.json)."""
    return sorted(p.parent for p in Path(root).rglob("split.json")
                  if (p.parent / "config.yaml").is_file())


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# TINY, repeatable bit for bit (deterministic CPU kernels, seeded augmentation), with TensorBoard
# on: what the fault tests (tests/faults/) kill, resume and compare with an uninterrupted run.
SOAK_ARGS = [*TINY, "logger=tensorboard", "trainer.deterministic=true", "augmentation=basic",
             "scheduler=cosine"]


@pytest.fixture(scope="session")
def deterministic_run(tmp_path_factory) -> Path:
    """One finished, uninterrupted SOAK_ARGS run: the reference of the fault tests (copy it
    before changing anything)."""
    cwd = tmp_path_factory.mktemp("deterministic-run")
    run_cli("train", *SOAK_ARGS, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny training run, shared by tests that only read its artifacts."""
    cwd = tmp_path_factory.mktemp("tiny-run")
    run_cli("train", *TINY, "logger=tensorboard", "eval.latency=true", "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


# Format-faithful stand-ins (segbench.data.fixtures), written once per session; tests read them
# and copy or symlink them into their own tmp_path before changing anything.

@pytest.fixture(scope="session")
def lung_stand_in(tmp_path_factory) -> fixtures.StandIn:
    """24 int16 HU 512x512 slices (ID_XXXX_Z_YYYY.tif) with uint8 {0, 255} lung masks."""
    return fixtures.write_lung_ct(tmp_path_factory.mktemp("lung_ct"))


@pytest.fixture(scope="session")
def lgg_stand_in(tmp_path_factory) -> fixtures.StandIn:
    """kaggle_3m with 4 patients (CS, DU, FG, HT) of 10, 13, 16 and 11 slices (256x256x3)."""
    return fixtures.write_lgg_mri(tmp_path_factory.mktemp("lgg_mri"))


@pytest.fixture(scope="session")
def kvasir_stand_in(tmp_path_factory) -> fixtures.StandIn:
    """10 Kvasir-Instrument frames at the dataset's sizes: 8 in train.txt, 2 in test.txt."""
    return fixtures.write_kvasir_instrument(tmp_path_factory.mktemp("kvasir_instrument"))


# --- The same checks on the stand-in and on the real sample --------------------------------------

@dataclass(frozen=True)
class Source:
    """A dataset some checks run on twice: the generated stand-in ("stand-in"), and the real
    sample in ../shared/data ("shared", marked shared_data). `facts` holds what is known about
    it (for the stand-in from its construction, for the sample from the files as shipped)."""

    name: str
    root: Path
    facts: dict


SOURCES = ["stand-in", pytest.param("shared", marks=pytest.mark.shared_data)]

# The shared LGG sample: 4 whole patients (slices per patient), 62 slices with tumour.
SHARED_LGG_SLICES = {"TCGA_CS_4941": 23, "TCGA_DU_5849": 38, "TCGA_FG_5962": 51, "TCGA_HT_7473": 32}
# The shared Kvasir-Instrument sample's 18 masks (of 590), by size.
SHARED_KVASIR_SIZES = {"768x576": 3, "720x576": 3, "1280x1024": 2, "1920x1072": 2, "1225x1013": 1,
                       "633x531": 1, "1349x1071": 1, "614x529": 1, "628x530": 1, "572x532": 1,
                       "623x531": 1, "623x530": 1}


def _sizes(stand_in: fixtures.StandIn) -> dict[str, int]:
    return dict(Counter(f"{w}x{h}" for w, h in stand_in.sizes.values()))


@pytest.fixture(scope="session", params=SOURCES)
def lgg_source(request) -> Source:
    """facts: slices (patient -> slice count), tumour (slices with a non-empty mask), pools
    (the seeded patient split: 1 of the 4 patients, the FG one, is the test split)."""
    if request.param == "shared":
        return Source("shared", SHARED_DATA / "lgg_sample", {
            "slices": SHARED_LGG_SLICES, "tumour": 62, "pools": {"train": 93, "test": 51}})
    lgg = request.getfixturevalue("lgg_stand_in")
    slices = {p: len(ids) for p, ids in lgg.patients.items()}
    test = slices["TCGA_FG_0003"]
    return Source("stand-in", lgg.root, {"slices": slices, "tumour": len(lgg.foreground),
                                         "pools": {"train": sum(slices.values()) - test,
                                                   "test": test}})


@pytest.fixture(scope="session", params=SOURCES)
def lung_source(request) -> Source:
    """facts: ids (every slice's name, sorted)."""
    if request.param == "shared":
        root = SHARED_DATA / "lung_ct_sample"
        ids = sorted(p.stem for p in (root / "2d_images").glob("*.tif"))
        return Source("shared", root, {"ids": ids})
    lung = request.getfixturevalue("lung_stand_in")
    return Source("stand-in", lung.root, {"ids": list(lung.ids)})


@pytest.fixture(scope="session", params=SOURCES)
def kvasir_source(request, tmp_path_factory) -> Source:
    """facts: files (pairs on disk), train_files/test_files (of them, listed in train.txt/test.txt),
    listed (ids in the two lists), sizes ("WxH" -> count). The shared sample has masks only:
    its copy gets a JPEG frame of each mask's size."""
    if request.param == "shared":
        root = tmp_path_factory.mktemp("shared-kvasir")
        sample = SHARED_DATA / "kvasir_instrument_sample"
        shutil.copytree(sample / "masks", root / "masks")
        for name in ("train.txt", "test.txt"):
            shutil.copy(sample / name, root / name)
        fixtures.write_frames_for_masks(root / "masks", root / "images")
        return Source("shared", root, {"files": 18, "train_files": 15, "test_files": 3,
                                       "listed": 590, "sizes": SHARED_KVASIR_SIZES})
    kvasir = request.getfixturevalue("kvasir_stand_in")
    lists, files = kvasir.split_files, set(kvasir.ids)
    return Source("stand-in", kvasir.root, {
        "files": len(files), "train_files": len(set(lists["train"]) & files),
        "test_files": len(set(lists["test"]) & files),
        "listed": len(lists["train"]) + len(lists["test"]), "sizes": _sizes(kvasir)})
