"""`segbench verify` on the shared samples (which pass) and on broken copies (which do not)."""

from __future__ import annotations

import cv2
import numpy as np

from conftest import run_cli
from datasets_util import LGG, LUNG, compose_cfg, folder_dataset, kvasir_copy
from segbench.data.verify import format_report, verify_dataset


def verify_cfg(*overrides):
    return compose_cfg(*overrides, config="verify")


def test_lgg_sample_passes():
    report = verify_dataset(verify_cfg("dataset=lgg_mri", f"dataset.root={LGG}"))
    assert report["problems"] == []
    assert report["pools"] == {"train": 93, "test": 51} and report["pairs"] == 144
    assert report["image_sizes"] == {"256x256": 144}
    assert report["image_files"] == {"3ch uint8": 144} and report["mask_files"] == {"1ch uint8": 144}
    assert set(report["mask_value_sets"]) == {"{0}", "{0, 255}"}
    assert 0.4 < report["empty_masks"]["all"] < 0.7
    assert "patient" in report["split_text"]["test"]
    assert format_report(report).endswith("OK: no problems found")


def test_lung_sample_passes_and_reports_hounsfield_files():
    report = verify_dataset(verify_cfg("dataset=lung_ct", f"dataset.root={LUNG}"))
    assert report["problems"] == [] and report["warnings"] == []
    assert report["image_files"] == {"1ch int16": 24}
    assert report["splits"] == {"train": 15, "val": 4, "test": 5}
    assert report["empty_masks"]["all"] == 0.0


def test_kvasir_copy_passes_with_a_partial_copy_warning(tmp_path):
    root = kvasir_copy(tmp_path / "kvasir")
    report = verify_dataset(verify_cfg("dataset=kvasir_instrument", f"dataset.root={root}"))
    assert report["problems"] == []
    assert report["mask_files"] == {"3ch uint8": 18} and report["image_files"] == {"3ch uint8": 18}
    assert len(report["image_sizes"]) > 5 and report["image_sizes"]["720x576"] >= 3
    assert any("572 of the 590 listed ids" in w for w in report["warnings"])


def test_broken_folder_reports_every_problem(tmp_path):
    root = folder_dataset(tmp_path / "mine", n=8, mask_values=(0, 200))
    cv2.imwrite(str(root / "images" / "orphan.png"), np.zeros((8, 8), np.uint8))
    (root / "images" / "case5.png").write_bytes(b"garbage")
    report = verify_dataset(verify_cfg("dataset=folder", f"dataset.root={root}"))
    assert report["unpaired"] == [str(root / "images" / "orphan.png")]
    assert len(report["unreadable"]) == 1 and "case5.png" in report["unreadable"][0]
    assert len(report["problems"]) == 2
    assert any("[200]" in w and "binarized" in w for w in report["warnings"])
    assert report["pairs"] == 8
    # With on_unpaired=skip the orphan is a warning, the corrupt file still a problem.
    report = verify_dataset(verify_cfg("dataset=folder", f"dataset.root={root}",
                                       "dataset.on_unpaired=skip"))
    assert len(report["problems"]) == 1 and any("orphan.png" in w for w in report["warnings"])


def test_missing_root_is_a_problem(tmp_path):
    report = verify_dataset(verify_cfg("dataset=lgg_mri", f"dataset.root={tmp_path / 'none'}"))
    assert len(report["problems"]) == 1 and "does not exist" in report["problems"][0]


def test_cli_exit_codes(tmp_path):
    ok = run_cli("verify", "dataset=lung_ct", f"dataset.root={LUNG}", cwd=tmp_path)
    assert "OK: no problems found" in ok.stdout and "1ch int16: 24" in ok.stdout
    assert list(tmp_path.glob("outputs/verify/*_lung_ct/verify.json"))
    root = folder_dataset(tmp_path / "mine", n=6)
    (root / "masks" / "case2.png").write_bytes(b"")
    bad = run_cli("verify", "dataset=folder", f"dataset.root={root}", cwd=tmp_path, check=False)
    assert bad.returncode != 0
    out = bad.stdout + bad.stderr
    assert "case2.png" in out and "1 problem(s)" in out and "Traceback" not in out
