"""`segbench verify` on the real formats (the generated stand-ins and, where it is beside the
repository, the shared samples: which pass) and on broken copies (which do not)."""

from __future__ import annotations

import cv2
import numpy as np

from conftest import run_cli
from datasets_util import compose_cfg, folder_dataset
from segbench.data.verify import format_report, verify_dataset


def verify_cfg(*overrides):
    return compose_cfg(*overrides, config="verify")


def test_lgg_passes(lgg_source):
    facts = lgg_source.facts
    total = sum(facts["slices"].values())
    report = verify_dataset(verify_cfg("dataset=lgg_mri", f"dataset.root={lgg_source.root}"))
    assert report["problems"] == []
    assert report["pools"] == facts["pools"] and report["pairs"] == total
    assert report["image_sizes"] == {"256x256": total}
    assert report["image_files"] == {"3ch uint8": total}
    assert report["mask_files"] == {"1ch uint8": total}
    assert set(report["mask_value_sets"]) == {"{0}", "{0, 255}"}
    assert report["empty_masks"]["all"] == round(1 - facts["tumour"] / total, 4)
    assert 0.4 < report["empty_masks"]["all"] < 0.7  # most slices are empty, not all
    assert "patient" in report["split_text"]["test"]
    assert format_report(report).endswith("OK: no problems found")


def test_lung_passes_and_reports_hounsfield_files(lung_source):
    report = verify_dataset(verify_cfg("dataset=lung_ct", f"dataset.root={lung_source.root}"))
    assert report["problems"] == [] and report["warnings"] == []
    assert report["image_files"] == {"1ch int16": 24} and report["mask_files"] == {"1ch uint8": 24}
    assert report["image_sizes"] == {"512x512": 24}
    assert report["splits"] == {"train": 15, "val": 4, "test": 5}
    assert report["empty_masks"]["all"] == 0.0 and report["black_images"] == 0


def test_kvasir_passes(kvasir_source):
    facts = kvasir_source.facts
    report = verify_dataset(verify_cfg("dataset=kvasir_instrument",
                                       f"dataset.root={kvasir_source.root}"))
    assert report["problems"] == []
    n = facts["files"]
    assert report["mask_files"] == {"3ch uint8": n} and report["image_files"] == {"3ch uint8": n}
    assert report["image_sizes"] == facts["sizes"]
    assert len(report["image_sizes"]) > 5 and report["image_sizes"]["720x576"] >= 3
    assert report["mask_value_sets"] == {"{0, 255}": n} and report["empty_masks"]["all"] == 0.0
    missing = facts["listed"] - n
    partial = [w for w in report["warnings"] if "listed ids" in w]
    if missing:  # the shared sample is a partial copy and says so
        assert any(f"{missing} of the {facts['listed']} listed ids" in w for w in partial)
    else:
        assert report["warnings"] == []


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


def test_cli_exit_codes(tmp_path, lung_stand_in):
    ok = run_cli("verify", "dataset=lung_ct", f"dataset.root={lung_stand_in.root}", cwd=tmp_path)
    assert "OK: no problems found" in ok.stdout and "1ch int16: 24" in ok.stdout
    assert list(tmp_path.glob("outputs/verify/*_lung_ct/verify.json"))
    root = folder_dataset(tmp_path / "mine", n=6)
    (root / "masks" / "case2.png").write_bytes(b"")
    bad = run_cli("verify", "dataset=folder", f"dataset.root={root}", cwd=tmp_path, check=False)
    assert bad.returncode != 0
    out = bad.stdout + bad.stderr
    assert "case2.png" in out and "1 problem(s)" in out and "Traceback" not in out


def test_a_folder_without_split_files_says_its_split_is_seeded(tmp_path, kvasir_source):
    root = folder_dataset(tmp_path / "mine", n=10)
    text = format_report(verify_dataset(verify_cfg("dataset=folder", f"dataset.root={root}")))
    assert "test split   train: 8, test: 2 (seeded: test_fraction 0.2, split_seed 0; no " \
           "train.txt/test.txt)" in text and "as shipped" not in text
    (root / "train.txt").write_text("\n".join(f"case{i}" for i in range(7)) + "\n")
    (root / "test.txt").write_text("\n".join(f"case{i}" for i in range(7, 10)) + "\n")
    text = format_report(verify_dataset(verify_cfg("dataset=folder", f"dataset.root={root}")))
    assert "test split   train: 7, test: 3 (as shipped)" in text
    kvasir = format_report(verify_dataset(verify_cfg("dataset=kvasir_instrument",
                                                     f"dataset.root={kvasir_source.root}")))
    assert "(as shipped)" in kvasir
