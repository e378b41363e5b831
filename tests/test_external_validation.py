"""External validation: a run's model (or an ensemble's) scored on another labelled set with
`segbench eval run_dir=R dataset=folder dataset.root=<dir>`, and shown beside the internal test
in `segbench report`; and the one precedence rule of the eval settings every command uses."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY, read_json, run_cli
from datasets_util import folder_dataset
from segbench import SegbenchError
from segbench.inference.evaluation import (
    _default_eval,
    eval_settings,
    external_record,
    external_samples,
)

# --------------------------------------------------------------------------- eval settings


def test_the_command_line_wins_then_the_situation_then_the_run_then_the_yaml():
    own = {"threshold": 0.3, "tta": True, "native_resolution": False}
    s = eval_settings({"threshold": 0.7, "tta": None}, [own], prefer={"native_resolution": True})
    assert s.threshold == 0.7            # given
    assert s.tta is True                 # null on the command line: the run's own
    assert s.native_resolution is True   # what the situation implies beats the run's own
    assert s.surface_workers == _default_eval()["surface_workers"]  # a run from before the key
    assert eval_settings({"native_resolution": False}, [own],
                         prefer={"native_resolution": True}).native_resolution is False


def test_members_that_disagree_on_a_scoring_setting_need_the_command_line():
    members = [{"threshold": 0.5}, {"threshold": 0.4}]
    with pytest.raises(SegbenchError, match=r"different eval.threshold.*eval.threshold=<value>"):
        eval_settings({}, members)
    assert eval_settings({"threshold": 0.45}, members).threshold == 0.45
    # settings that do not change the numbers take the first member's
    assert eval_settings({}, [{"surface_workers": 2}, {"surface_workers": 4}]).surface_workers == 2


def test_a_bad_eval_setting_is_one_line_naming_the_key():
    with pytest.raises(SegbenchError, match=r"eval.threshold=1.5: use a probability in \[0, 1\]"):
        eval_settings({"threshold": 1.5}, [{}])


# --------------------------------------------------------------------------- which images


def _folder_cfg(root: Path):
    cfg = OmegaConf.load(Path(__file__).parents[1] / "configs" / "dataset" / "folder.yaml")
    cfg.root = str(root)
    return OmegaConf.create({"dataset": cfg})


def test_an_external_folder_is_every_pair_unless_it_has_split_files(tmp_path):
    root = folder_dataset(tmp_path / "ext", n=6)
    samples, rule = external_samples(_folder_cfg(root))
    assert [s.id for s in samples] == [f"case{i}" for i in range(6)]
    assert rule == "every labelled image"
    (root / "train.txt").write_text("case0\ncase1\ncase2\ncase3\n")
    (root / "test.txt").write_text("case4\ncase5\n")
    samples, rule = external_samples(_folder_cfg(root))
    assert [s.id for s in samples] == ["case4", "case5"] and "split files" in rule


def test_the_fingerprint_follows_the_files(tmp_path):
    root = folder_dataset(tmp_path / "ext", n=4)
    cfg = _folder_cfg(root)
    samples, rule = external_samples(cfg)
    first = external_record(cfg, samples, rule)
    assert len(first["fingerprint"]) == 16 and first["images"] == 4 and first["dataset"] == "folder"
    with open(root / "masks" / "case1.png", "ab") as f:
        f.write(b"\0")  # a changed file: another set
    assert external_record(cfg, *external_samples(cfg))["fingerprint"] != first["fingerprint"]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> dict:
    """Two tiny runs (seeds 0 and 1) side by side, their ensemble, and a 6-pair external folder
    of another size (40x40) than the runs' 64x64."""
    base = tmp_path_factory.mktemp("external")
    shutil.copytree(tiny_run, base / "study" / "seed0")
    run_cli("train", *TINY, "seed=1", f"hydra.run.dir={base / 'study' / 'seed1'}", cwd=base)
    run_cli("ensemble", str(base / "study" / "seed0"), str(base / "study" / "seed1"),
            f"output={base / 'ens'}", cwd=base)
    folder_dataset(base / "hospital_b", n=6, size=40)
    return {"base": base, "run": base / "study" / "seed0", "other": base / "study" / "seed1",
            "ensemble": base / "ens", "external": base / "hospital_b"}


def _latest_eval(run: Path) -> Path:
    return sorted((run / "eval").iterdir())[-1]


@pytest.mark.slow
def test_eval_on_an_external_folder_writes_its_own_record(runs):
    base, run = runs["base"], runs["run"]
    # a relative dataset.root, recorded absolute
    r = run_cli("eval", str(run), "dataset=folder", "dataset.root=hospital_b", cwd=base)
    assert r.returncode == 0, r.stderr
    out = _latest_eval(run)
    m = read_json(out / "metrics.json")
    ext = m["external"]
    assert ext["dataset"] == "folder" and ext["root"] == str(runs["external"].resolve())
    assert ext["images"] == 6 and ext["chosen"] == "every labelled image"
    assert len(ext["fingerprint"]) == 16
    assert m["native_resolution"] is True  # the default for an external set
    test = m["test"]
    assert test["n_images"] == 6
    assert test["tp"] + test["fp"] + test["fn"] + test["tn"] == 6 * 40 * 40
    with open(out / "per_case.csv") as f:
        assert sorted(row["image"] for row in csv.DictReader(f)) == [f"case{i}" for i in range(6)]
    assert (out / "predictions.png").stat().st_size > 1000
    assert read_json(run / "metrics.json")["test"] != test  # the run's own record is untouched
    assert "external" not in read_json(run / "metrics.json")

    r = run_cli("eval", str(run), "dataset=folder", f"dataset.root={runs['external']}",
                "eval.native_resolution=false", cwd=base)
    low = read_json(_latest_eval(run) / "metrics.json")
    assert low["native_resolution"] is False
    low_test = low["test"]
    assert low_test["tp"] + low_test["fp"] + low_test["fn"] + low_test["tn"] == 6 * 64 * 64


@pytest.mark.slow
def test_an_ensemble_directory_is_evaluated_through_its_members(runs):
    ens, base = runs["ensemble"], runs["base"]
    recorded = read_json(ens / "metrics.json")
    assert run_cli("eval", str(ens), cwd=base).returncode == 0
    again = read_json(_latest_eval(ens) / "metrics.json")
    assert again["test"]["dice"] == recorded["test"]["dice"]
    assert again["test"]["tp"] == recorded["test"]["tp"]
    assert run_cli("eval", str(ens), "dataset=folder", f"dataset.root={runs['external']}",
                   cwd=base).returncode == 0
    ext = read_json(_latest_eval(ens) / "metrics.json")
    assert ext["external"]["images"] == 6 and ext["test"]["n_images"] == 6


@pytest.mark.slow
def test_report_puts_internal_and_external_test_side_by_side(runs):
    base = runs["base"]
    for run in (runs["run"], runs["other"]):  # the latest evaluation of a set counts
        run_cli("eval", str(run), "dataset=folder", f"dataset.root={runs['external']}", cwd=base)
    r = run_cli("report", str(base / "study"), "report.bootstrap=200", cwd=base)
    assert r.returncode == 0, r.stderr
    report = base / "study" / "report"
    text = (report / "report.md").read_text()
    assert "## External validation" in text
    section = text.split("## External validation")[1].split("\n## ")[0]
    assert "test dice" in section and "hospital_b (" in section and "(n=2)" in section
    with open(report / "tables" / "external.csv") as f:
        row = next(csv.DictReader(f))
    key = next(k for k in row if k.startswith("hospital_b") and k.endswith("_dice_mean"))
    values = [read_json(p)["test"]["dice"] for run in (runs["run"], runs["other"])
              for p in [sorted((run / "eval").glob("*/metrics.json"))[-1]]]
    assert float(row[key]) == pytest.approx(sum(values) / 2, abs=1e-5)
    assert float(row["test_dice_mean"]) == pytest.approx(
        sum(read_json(run / "metrics.json")["test"]["dice"]
            for run in (runs["run"], runs["other"])) / 2,
        abs=1e-5)


def test_external_arguments_are_checked_before_any_folder_is_made(tiny_run, tmp_path):
    r = run_cli("eval", str(tiny_run), "dataset=folder", "dataset.root=nowhere", cwd=tmp_path,
                check=False)
    assert r.returncode == 2 and "dataset.root=nowhere: no such folder" in r.stderr
    r = run_cli("eval", str(tiny_run), f"dataset.root={tmp_path}", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "dataset=folder dataset.root=" in r.stderr
    assert not any(tmp_path.iterdir())
