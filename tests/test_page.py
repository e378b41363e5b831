"""index.html, the report as one page: every section, its files beside it, nothing from the
network; in a real browser (headless Chromium, e2e): no console errors, every image loads, a
click on a column header re-sorts, and a screenshot for a person to look at."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_subprocess
from segbench.report import build_report
from test_cases import write_cases
from test_report import IDS, fake_run, per_image

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def six_runs(root: Path, *, cases: bool = True) -> Path:
    """optimizer adam / sgd / rmsprop, two seeds each, scored at 64 px, each with its cases.npz."""
    for ci, (optimizer, shift) in enumerate((("adam", 0.0), ("sgd", -0.1), ("rmsprop", 0.03))):
        for seed in (0, 1):
            dice = per_image(10 * ci + seed, shift)
            run = fake_run(root / f"optimizer={optimizer}" / f"seed={seed}",
                           [f"optimizer={optimizer}", f"seed={seed}"], dice, num=2 * ci + seed)
            if cases:
                write_cases(run / "cases.npz", list(dice.values()), shapes=[(64, 64)] * len(IDS),
                            hd95=np.linspace(1, 9, len(IDS)), seed=seed, image_size=64, ids=IDS)
    return root


def page_files(page: Path) -> list[Path]:
    return [page.parent / src for src in re.findall(r'<img src="([^"]+)"', page.read_text())]


def test_the_page_holds_every_section_with_its_files_beside_it(tmp_path):
    root = six_runs(tmp_path / "study")
    result = build_report(root, root / "report", n_resamples=200)
    page = root / "report" / "index.html"
    assert result["page"] == "index.html" and len(result["galleries"]) == 3
    text = page.read_text()
    for section in ("what-ran", "results", "comparisons", "figures", "curves", "gallery", "notes"):
        assert f'<section id="{section}">' in text
    assert "<b>Method.</b> Paired over the same test images" in text  # the comparisons' method line
    # what ran, results, 2 comparisons, 3 case tables
    assert text.count('<table class="sortable">') >= 3 + 3
    # offline: no address outside the report folder, every image a file beside the page
    assert not re.search(r'(src|href)="(https?:)?//', text)
    files = page_files(page)
    # metrics, curves, predictions; 3 galleries; disagreement; 3 curves
    assert len(files) == 3 + 3 + 1 + 3
    assert all(f.is_file() and f.resolve().is_relative_to(page.parent) for f in files)
    assert sum(f.stat().st_size for f in files) + page.stat().st_size < 5_000_000
    # the per-case table links to each case and each pictured case to its gallery
    assert text.count('<tr id="case-0-') == len(IDS)
    assert '<a href="#gallery-0">worst Dice' in text and 'href="#case-0-img_' in text


def test_runs_without_cases_get_a_page_that_says_so(tmp_path):
    root = six_runs(tmp_path / "study", cases=False)
    build_report(root, root / "report", n_resamples=200)
    text = (root / "report" / "index.html").read_text()
    assert "No run holds cases.npz" in text and "segbench eval run_dir=" in text


def test_a_single_run_gets_the_same_page(tmp_path):
    run = fake_run(tmp_path / "run", ["optimizer=adam"], per_image(0, 0.0))
    write_cases(run / "cases.npz", list(per_image(0, 0.0).values()), ids=IDS)
    result = build_report(run, run / "report", n_resamples=200)
    text = (run / "report" / "index.html").read_text()
    assert result["galleries"] == ["gallery/cases_0.png"] and "disagreement.png" not in text
    assert all(f.is_file() for f in page_files(run / "report" / "index.html"))


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None,
                    reason="no Chromium installed (Debian: apt-get install chromium)")
def test_the_page_in_a_real_browser(tmp_path):
    root = six_runs(tmp_path / "study")
    run_subprocess("report", str(root), "report.bootstrap=200", cwd=tmp_path)
    page = root / "report" / "index.html"
    started = time.perf_counter()
    proc = chromium("--dump-dom", f"{page.as_uri()}#selftest")
    seconds = time.perf_counter() - started
    found = re.search(r'<pre id="selftest"[^>]*>([^<]*)</pre>', proc.stdout)
    assert found and found.group(1), proc.stderr[-3000:]
    check = json.loads(found.group(1))
    assert check["errors"] == [] and check["broken"] == [], check
    assert check["images"] == len(page_files(page))
    assert check["sort"]["ok"] and check["sort"]["column"] == "dice", check["sort"]
    assert check["sort"]["ascending"] == sorted(check["sort"]["before"])
    assert check["loadMs"] < 2000, check["loadMs"]
    assert "CONSOLE" not in proc.stderr  # the page logs nothing to the console
    assert seconds < 30
    shot = tmp_path / "page.png"
    chromium("--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}", page.as_uri())
    assert shot.stat().st_size > 50_000  # a page drawn, not a blank one


def test_a_cut_cases_file_leaves_its_gallery_out(tmp_path, caplog):
    root = six_runs(tmp_path / "study")
    cut = root / "optimizer=sgd" / "seed=0" / "cases.npz"
    cut.write_bytes(cut.read_bytes()[:200])
    result = build_report(root, root / "report", n_resamples=200)
    assert len(result["galleries"]) == 3  # sgd's gallery comes from its seed=1 run
    assert "cannot be read" in caplog.text and "segbench eval run_dir=" in caplog.text
