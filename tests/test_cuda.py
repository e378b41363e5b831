"""The CUDA path: AMP (bf16 autocast; fp16 with a GradScaler), channels-last, pinned memory and
persistent workers, a short training resumed on the GPU, and DDP on NCCL with two GPUs. Marked
`cuda` and skipped without a CUDA GPU (the AMP bookkeeping is also tested on CPU, in
test_distributed.py); scripts/gpu_check.sh runs them with `python -m pytest -m cuda`."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY, read_json, run_cli, run_subprocess
from segbench.runs.rundir import RunDir

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# compile off: these tests are about other things, and compiling takes a minute per run.
GPU = [*TINY, "trainer.device=cuda", "trainer.compile=false"]


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from segbench import config_dir
    from segbench.cli_args import quote_numeric_choices
    from segbench.commands.auto_options import resolve_auto_options
    from segbench.runs.sweeps import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=quote_numeric_choices(list(overrides)))
    resolve_auto_options(cfg)  # as the train command does
    return cfg


def test_bf16_autocast_trains_on_the_gpu(tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run_cli("train", *GPU, "trainer.precision=bf16", "hydra.run.dir=run", cwd=tmp_path)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["precision"] == "bfloat16" and metrics["device"].startswith("cuda")
    assert metrics["device_name"] == torch.cuda.get_device_name(0)
    assert 0 < metrics["test"]["iou"] <= metrics["test"]["dice"] <= 1
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in last["model"].values() if t.is_floating_point())


def test_fp16_trains_with_a_grad_scaler_that_is_checkpointed(tmp_path):
    run_cli("train", *GPU, "trainer.precision=fp16", "hydra.run.dir=run", cwd=tmp_path)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["precision"] == "float16"
    for row in RunDir(tmp_path / "run").read_history():
        assert float(row["train_loss"]) == float(row["train_loss"])  # finite, not NaN
    scaler = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler  # an enabled scaler's state


def test_channels_last_pinned_memory_and_persistent_workers_on_the_gpu(tmp_path):
    from segbench.engine.trainer import StepSettings, build, train_one_epoch
    from segbench.inference.loop import Subject, eval_loader, evaluate
    from segbench.settings import check_train

    cfg = _compose(*GPU, "trainer.num_workers=2", "trainer.data_on_device=false",
                   f"paths.cache={tmp_path / 'cache'}")
    s = check_train(cfg)
    (tmp_path / "run").mkdir()
    parts = build(s, RunDir(tmp_path / "run"), resuming=False)
    device = parts.compute.device
    assert parts.compute.channels_last  # auto on CUDA
    weights = [p for p in parts.model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    loader = parts.data.train_loader
    assert loader.pin_memory and loader.persistent_workers and loader.num_workers == 2

    for epoch in (1, 2):  # persistent workers serve a second epoch
        parts.data.sampler.set_seed(epoch)
        out = train_one_epoch(parts.train_model, loader, parts.opt, parts.compute,
                              StepSettings(grad_clip=1.0, log_every=2), epoch)
        assert out["loss"] == out["loss"]
    # Channels-last evaluation agrees with the contiguous layout (up to kernel rounding).
    test = eval_loader(parts.data.datasets["test"], 8, device, 2)
    a = evaluate(Subject(parts.model, device, channels_last=True), test).summary()
    b = evaluate(Subject(parts.model.to(memory_format=torch.contiguous_format), device,
                         channels_last=False), test).summary()
    assert a["dice"] == pytest.approx(b["dice"], abs=2e-3)


def test_the_device_data_path_and_compile_train_on_the_gpu(tmp_path):
    """auto puts the split on the GPU; the strong preset's tensor form runs there; a compiled
    model trains and its checkpoints load into an uncompiled one."""
    from segbench.data.resident import ResidentBatches
    from segbench.engine.trainer import build
    from segbench.settings import check_train

    cfg = _compose(*GPU, "augmentation=strong", f"paths.cache={tmp_path / 'cache'}")
    (tmp_path / "run").mkdir()
    parts = build(cfg, check_train(cfg), RunDir(tmp_path / "run"), resuming=False)
    assert isinstance(parts.train_loader, ResidentBatches)
    assert parts.train_loader.images.device.type == "cuda"
    parts.sampler.set_seed(1)
    images, masks, _ = next(iter(parts.train_loader))
    assert images.is_cuda and images.dtype == torch.uint8 and set(masks.unique().tolist()) <= {0, 1}
    proc = run_cli("train", *GPU, "augmentation=strong", "trainer.compile=true",
                   "hydra.run.dir=compiled", cwd=tmp_path)
    assert "data on device: the training split" in proc.stdout
    metrics = read_json(tmp_path / "compiled" / "metrics.json")
    assert 0 <= metrics["test"]["iou"] <= metrics["test"]["dice"] <= 1
    RunDir(tmp_path / "compiled").load_model("best")


def test_a_short_gpu_training_resumes_where_it_stopped(tmp_path):
    args = [*GPU, "trainer.deterministic=true", "scheduler=plateau"]
    run_cli("train", *args, "trainer.max_epochs=3", "hydra.run.dir=full", cwd=tmp_path)
    run_cli("train", *args, "trainer.max_epochs=2", "hydra.run.dir=part", cwd=tmp_path)
    (tmp_path / "part" / "metrics.json").unlink()  # as if stopped after epoch 2
    proc = run_cli("train", f"trainer.resume={tmp_path / 'part'}", "trainer.max_epochs=3",
                   cwd=tmp_path)
    assert "resuming" in proc.stdout
    full, part = (RunDir(tmp_path / n).read_history() for n in ("full", "part"))
    assert [r["epoch"] for r in part] == ["1", "2", "3"]
    # Deterministic kernels make this equal on most GPUs; the tolerance allows kernels without a
    # deterministic version (a flipped pixel moves the IoU of 5 small images by ~2e-3).
    for a, b in zip(full, part, strict=True):
        for key, tol in (("train_loss", 1e-3), ("val_loss", 1e-3), ("val_iou", 5e-3)):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=tol, abs=tol), \
                (a["epoch"], key)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_train_one_run_with_nccl_and_synchronised_batch_norm(tmp_path):
    run_subprocess("train", *GPU, "trainer.devices=2", "trainer.sync_batchnorm=true",
                   "trainer.batch_size=4", "hydra.run.dir=run", cwd=tmp_path)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 8
    assert len(metrics["device_names"]) == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert "(torchrun, nccl)" in log and log.count("epoch 1/2 ") == 1
