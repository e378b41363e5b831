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
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

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
            raise SegbenchError("cannot check the exported model (so it is not kept): neither "
                                "onnxruntime nor onnx is installed; pip install 'segbench[export]'") from None
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
