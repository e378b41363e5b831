"""`segbench export run_dir=<dir> format=onnx|torchscript`: a run's checkpoint as a file that runs
without segbench, checked against the PyTorch model before it is reported as written.

The exported model is the whole wrapper: it takes a float32 batch N x C x H x W with values in
[0, 1] (8-bit images divided by 255), normalises and pads it as in training, and returns
N x classes x H x W logits (sigmoid(logit) >= 0.5 is foreground). H and W are fixed at export
(the run's resolution unless height=/width= say otherwise, since the padding depends on them);
the batch size is free.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from segbench import SegbenchError

log = logging.getLogger(__name__)

SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    # The TorchScript-based exporter: it needs no onnxscript and handles the fixed-size padding.
    # (torch >= 2.5 has a `dynamo` switch and, from 2.9, defaults it to the other exporter.)
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes fixed at export
        torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=int(opset), **legacy)


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray | None:
    """Logits from ONNX Runtime; None when it is not installed (the graph is then only checked)."""
    try:
        import onnxruntime as ort
    except ImportError:
        try:
            import onnx
        except ImportError:
            raise SegbenchError(f"wrote {path} but cannot check it: neither onnxruntime nor onnx "
                                "is installed; pip install 'segbench[export]'") from None
        onnx.checker.check_model(str(path), full_check=True)
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": batch})[0]


def run_torchscript(path: Path, batch: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(batch)).numpy()


def export_model(model: torch.nn.Module, fmt: str, path: Path, input_shape: tuple[int, int, int],
                 opset: int = 17, check_batch: int = 2, seed: int = 0) -> dict:
    """Export `model` (on the CPU, eval mode), run the file on a random batch and compare."""
    if fmt not in SUFFIX:
        raise SegbenchError(f"format={fmt!r}; use onnx or torchscript")
    model = model.cpu().eval()
    example = torch.rand((1, *input_shape), generator=torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        export_onnx(model, example, path, opset)
    else:
        export_torchscript(model, example, path)
    # A batch size other than the traced one shows that the batch axis really is free.
    batch = torch.rand((check_batch, *input_shape), generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        expected = model(batch).numpy()
    got = run_onnx(path, batch.numpy()) if fmt == "onnx" else run_torchscript(path, batch.numpy())
    check = {"check_batch": list(batch.shape)}
    if got is None:
        check["checked_with"] = "onnx.checker (install onnxruntime to compare outputs)"
    else:
        if got.shape != expected.shape:
            raise SegbenchError(f"the exported model returns shape {got.shape}, PyTorch {expected.shape}")
        check.update(checked_with="onnxruntime" if fmt == "onnx" else "torch.jit.load",
                     max_abs_diff=float(np.abs(got - expected).max()))
    return check


def export_task(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from segbench.engine.checkpoint import load_checkpoint
    from segbench.models import build_model

    run_dir = Path(cfg.run_dir).expanduser()
    if not (run_dir / "config.yaml").is_file():
        raise SegbenchError(f"{run_dir} is not a segbench run directory: config.yaml is missing")
    if cfg.format not in SUFFIX:
        raise SegbenchError(f"format={cfg.format!r}; use format=onnx or format=torchscript")
    if cfg.checkpoint not in ("best", "last"):
        raise SegbenchError(f"checkpoint={cfg.checkpoint!r}; use best or last")
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    height = int(cfg.height or train_cfg.resolution.height)
    width = int(cfg.width or train_cfg.resolution.width)
    # The run's model, built for the export size (its padding follows the size).
    train_cfg.resolution.height, train_cfg.resolution.width = height, width
    model = build_model(train_cfg, pretrained=False)  # the checkpoint holds every weight
    state = load_checkpoint(run_dir / "checkpoints" / f"{cfg.checkpoint}.pt")
    model.load_state_dict(state["model"])
    channels = int(model.mean.shape[1])

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    path = Path(cfg.output).expanduser() if cfg.output else out_dir / f"model{SUFFIX[cfg.format]}"
    check = export_model(model, cfg.format, path, (channels, height, width), opset=int(cfg.opset))
    diff = check.get("max_abs_diff")
    if diff is not None and not diff <= float(cfg.atol):
        raise SegbenchError(
            f"the exported {cfg.format} model differs from PyTorch by up to {diff:.3g} (> atol "
            f"{cfg.atol}); {path} was written but should not be trusted. Try format=torchscript or "
            "another opset="
        )
    info = {
        "file": str(path.resolve()), "format": cfg.format, "run_dir": str(run_dir.resolve()),
        "checkpoint": cfg.checkpoint, "epoch": state.get("epoch"), "model": train_cfg.model.name,
        "input": {"name": "image", "shape": ["batch", channels, height, width], "dtype": "float32",
                  "range": [0.0, 1.0]},
        "output": {"name": "logits", "shape": ["batch", int(train_cfg.model.get("classes", 1)), height, width],
                   "foreground": f"sigmoid(logits) >= {train_cfg.eval.threshold}"},
        "opset": int(cfg.opset) if cfg.format == "onnx" else None,
        "atol": float(cfg.atol), **check,
    }
    path.with_name(path.name + ".json").write_text(json.dumps(info, indent=2))
    log.info("wrote %s (%s, input %s x %d x %d x %d float in [0, 1]); %s", path, cfg.format, "N",
             channels, height, width,
             f"max |difference| from PyTorch {diff:.2e} on a batch of {check['check_batch'][0]} "
             f"({check['checked_with']})" if diff is not None else check["checked_with"])
    return info
