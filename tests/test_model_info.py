"""Model facts: parameter counts, FLOPs, latency and memory, in `segbench info` and metrics.json."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import read_json, run_cli
from model_cases import SMALL_MODELS, model_cfg, single_thread  # noqa: F401  (fixture)
from segbench.models import build_model
from segbench.models.info import count_flops, format_table, measure, model_facts


def test_flops_of_a_convolution_by_hand():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 2 FLOPs per multiply-add, one 3x3x3 filter per output pixel and channel.
    assert count_flops(conv, (3, 16, 20)) == 2 * (8 * 16 * 20) * (3 * 9)
    facts = model_facts(conv, (3, 16, 20))
    assert facts["params"] == facts["trainable_params"] == 8 * 3 * 9
    assert facts["size_mb"] == round(8 * 3 * 9 * 4 / 2**20, 3)
    assert facts["flops_input"] == [3, 16, 20]


@pytest.mark.parametrize("case", ["mcnet-v5", "deeplabv3plus"])
def test_meta_flop_count_equals_a_real_forward_count(case):
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_cfg(SMALL_MODELS[case], height=72, width=88)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 3, 72, 88))
    assert count_flops(model, (3, 72, 88)) == counter.get_total_flops() > 0


def test_facts_leave_the_model_as_they_found_it():
    model = build_model(model_cfg(SMALL_MODELS["mcnet-v4"]))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model_facts(model, (3, 64, 64))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too


def test_frozen_parameters_are_not_trainable():
    model = build_model(model_cfg(SMALL_MODELS["unet"]))
    for p in model.net.encoder.parameters():
        p.requires_grad_(False)
    facts = model_facts(model)
    frozen = sum(p.numel() for p in model.net.encoder.parameters())
    assert facts["trainable_params"] == facts["params"] - frozen > 0


def test_latency_and_peak_memory_on_cpu():
    model = build_model(model_cfg(SMALL_MODELS["mcnet-v1"]))
    result = measure(model, (3, 64, 64), batch_size=2, device=torch.device("cpu"), warmup=1,
                     repeats=3)
    assert result["latency_ms"] > 0
    assert result["latency_ms_per_image"] == pytest.approx(result["latency_ms"] / 2, abs=1e-3)
    weights_mb = model_facts(model)["size_mb"]
    # At least the weights, the input batch and the first feature maps are held at once.
    activation_mb = 2 * 8 * 64 * 64 * 4 / 2**20
    assert result["peak_mb"] >= weights_mb + activation_mb


def test_table_formats_numbers_for_reading():
    table = format_table([{"label": "mcnet v1", "activation": "relu", "input": "3x64x64",
                           "params": 31037633, "trainable_params": 31037633, "size_mb": 118.4,
                           "gflops": 6.02, "latency_ms": None, "batch_size": None, "peak_mb": None,
                           "device": None}])
    header, rule, row = table.splitlines()
    assert header.split()[:3] == ["model", "activation", "input"]
    assert "31,037,633" in row and "6.02" in row and row.rstrip().endswith("-")


def test_info_prints_the_v1_parameter_count(tmp_path):
    proc = run_cli("info", "model=mcnet", "model.preset=v1", "resolution=64", "latency=false",
                   cwd=tmp_path)
    assert "31,037,633" in proc.stdout
    row = read_json(next((tmp_path / "outputs" / "info").glob("*/info.json")))
    assert row["params"] == 31_037_633 and row["flops"] > 0 and row["label"] == "mcnet v1"


def test_info_sweep_ends_with_one_table_of_all_models(tmp_path):
    proc = run_cli("info", "-m", "model=classic_unet,mcnet", "resolution=64", "batch_size=2",
                   "warmup=0", "repeats=1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    table = proc.stdout.split("2 configurations")[1]
    rows = [line for line in table.splitlines() if re.match(r"^(classic_unet|mcnet) ", line)]
    assert [r.split()[0] for r in rows] == ["classic_unet", "mcnet"]
    assert "7,763,041" in rows[0] and "31,037,633" in rows[1]
    for job in ("0", "1"):
        facts = read_json(tmp_path / "sweep" / job / "info.json")
        assert facts["latency_ms"] > 0 and facts["peak_mb"] > facts["size_mb"]


def test_training_records_flops_in_metrics_json(tiny_run):
    model = read_json(tiny_run / "metrics.json")["model"]
    assert model["params"] > 0 and model["trainable_params"] == model["params"]
    assert model["flops"] > 0 and model["flops_input"] == [3, 64, 64]
    assert model["gflops"] == round(model["flops"] / 1e9, 3)
