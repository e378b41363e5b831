"""`segbench export run_dir=<dir> format=onnx|exported_program|torchscript`: a run's checkpoint as
a file that runs without segbench, checked against the PyTorch model before it is reported as
written.

The exported model is the whole wrapper: it takes a float32 batch N x C x H x W with values in
[0, 1] (8-bit images divided by 255), normalises and pads it as in training, and returns
N x classes x H x W logits (sigmoid(logit) >= 0.5 is foreground). The batch size is free in
every format. ONNX: height and width are free too (the padding to the network's multiple is
computed in the graph), checked with ONNX Runtime at two sizes other than the export size;
where that check fails the file is exported again at the fixed size and says so.
ExportedProgram (torch.export, what replaces TorchScript's deprecated torch.jit) and
TorchScript: H and W fixed at the export size (torch.export cannot yet prove the padding's
slice bounds for every size).
"""

from __future__ import annotations

import inspect
import io
import logging
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segbench import SegbenchError, __version__
from segbench.metrics.stats import bootstrap_mean_ci
from segbench.models.registry import MIN_STD, SegmentationModel, standardise
from segbench.task import task_of

log = logging.getLogger(__name__)

SUFFIX = {"onnx": ".onnx", "exported_program": ".pt2", "torchscript": ".torchscript.pt"}


class AnySize(torch.nn.Module):
    """The model's forward for a traced graph of any height and width: the padding to the
    network's multiple is always applied (zero where none is needed) with amounts computed from
    the input's size, so the tracer records arithmetic instead of the example's constants.
    Reflection padding needs each side longer than the pad (a divisor of 32: over 31 pixels)."""

    def __init__(self, model: SegmentationModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if m.per_image:
            x = standardise(x)
        x = (x - m.mean) / m.std
        d = int(m.divisor or 1)
        if d == 1:
            return m.net(x)
        h, w = x.shape[-2], x.shape[-1]
        pad_h, pad_w = (d - h % d) % d, (d - w % d) % d
        top, left = pad_h // 2, pad_w // 2
        x = torch.nn.functional.pad(x, (left, pad_w - left, top, pad_h - top), mode="reflect")
        return m.net(x).narrow(2, top, h).narrow(3, left, w)


def export_onnx(model: SegmentationModel, example: torch.Tensor, path: Path, opset: int,
                any_size: bool = True) -> None:
    # The TorchScript-based exporter: it needs no onnxscript and handles the padding.
    # (torch >= 2.5 has a `dynamo` switch and, from 2.9, defaults it to the other exporter.)
    has_switch = "dynamo" in inspect.signature(torch.onnx.export).parameters
    legacy: dict[str, Any] = {"dynamo": False} if has_switch else {}
    axes = {0: "batch", 2: "height", 3: "width"} if any_size else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes fixed at export
        # eval(): the exporter puts a module back in the mode it found it in, and a new
        # wrapper starts in training mode, which would switch the model's batch norm to it.
        torch.onnx.export(AnySize(model).eval() if any_size else model, (example,), str(path),
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes},
                          opset_version=int(opset), **legacy)


def export_program(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export's ExportedProgram (a .pt2 file; torch.export.load(path).module() runs it)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = example.expand(2, *example.shape[1:]).contiguous()  # 1 would be specialised
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()  # through bytes: torch.export.save wants a .pt2 name, the write is atomic
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())


def run_program(path: Path, batch: np.ndarray) -> np.ndarray:
    program = torch.export.load(io.BytesIO(path.read_bytes()))
    with torch.no_grad():
        return program.module()(torch.from_numpy(batch)).numpy()


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray | None:
    """Logits from ONNX Runtime; None when it is not installed (the graph is then only checked)."""
    try:
        import onnxruntime as ort  # optional extra
    except ImportError:
        try:
            import onnx  # optional extra
        except ImportError:
            raise SegbenchError("cannot check the exported model (so it is not kept): neither "
                                "onnxruntime nor onnx is installed; "
                                "pip install 'segbench[export]'") from None
        onnx.checker.check_model(str(path), full_check=True)
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": batch})[0]


def run_torchscript(path: Path, batch: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(batch)).numpy()


RUNNERS = {"onnx": run_onnx, "exported_program": run_program, "torchscript": run_torchscript}
CHECKED_WITH = {"onnx": "onnxruntime", "exported_program": "torch.export.load",
                "torchscript": "torch.jit.load"}


def other_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Two sizes unlike the export size (and unlike each other's remainders): where a graph
    that claims any height and width is run before it is kept."""
    return [(height + 13, width + 7), (height * 3 // 2 + 1, width // 2 + 17)]


def _compare(model, fmt: str, path: Path, shape: tuple[int, ...], seed: int) -> float | None:
    batch = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(batch).numpy()
    got = RUNNERS[fmt](path, batch.numpy())
    if got is None:
        return None
    if got.shape != expected.shape:
        raise SegbenchError(f"the exported model returns shape {got.shape} for input "
                            f"{list(shape)}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())


def export_model(model: SegmentationModel, fmt: str, path: Path, input_shape: tuple[int, int, int],
                 opset: int = 17, check_batch: int = 2, seed: int = 0, atol: float = 1e-4) -> dict:
    """Export `model` (on the CPU, eval mode), run the file on random batches and compare:
    at the export size with another batch size, and (ONNX) at two other sizes."""
    if fmt not in SUFFIX:
        raise SegbenchError(f"format={fmt!r}; use onnx, exported_program or torchscript")
    model = model.cpu().eval()
    channels, height, width = input_shape
    example = torch.rand((1, *input_shape), generator=torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    check: dict = {"check_batch": [check_batch, *input_shape], "dynamic": ["batch"]}
    if fmt == "onnx":
        export_onnx(model, example, path, opset, any_size=True)
        sizes = other_sizes(height, width)
        try:
            diffs = [_compare(model, fmt, path, (1, channels, h, w), seed + 2 + i)
                     for i, (h, w) in enumerate(sizes)]
            worst = max((d for d in diffs if d is not None), default=None)
            if worst is not None and not worst <= atol:
                raise SegbenchError(f"it differs from PyTorch by {worst:.3g} there")
            check.update(dynamic=["batch", "height", "width"],
                         checked_sizes=[list(s) for s in sizes])
            if worst is not None:
                check["max_abs_diff_other_sizes"] = worst
        except Exception as err:  # not valid at other sizes for this model: fix the size
            reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
            log.warning("the ONNX graph does not hold at other sizes (%s): exported at %dx%d only",
                        reason, height, width)
            check["fixed_size_because"] = reason
            export_onnx(model, example, path, opset, any_size=False)
    elif fmt == "exported_program":
        export_program(model, example, path)
    else:
        export_torchscript(model, example, path)
    # A batch size other than the traced one shows that the batch axis really is free.
    diff = _compare(model, fmt, path, (check_batch, *input_shape), seed + 1)
    if diff is None:
        check["checked_with"] = "onnx.checker (install onnxruntime to compare outputs)"
    else:
        check.update(checked_with=CHECKED_WITH[fmt], max_abs_diff=diff)
    return check


def model_card(info: dict, config: dict, metrics: dict | None, split: dict,
               per_case: list[dict]) -> dict:
    """What a user of the exported file needs to know, from the run's own records: input and
    preprocessing, threshold, the data it was trained and tested on (the split's fingerprint),
    test metrics with 95% intervals over the test images, and the versions."""
    tested: dict[str, Any] = {}
    for key in ("dice", "iou"):
        values = [float(r[key]) for r in per_case if r.get(key) not in (None, "", "nan")]
        if values:
            low, high = bootstrap_mean_ci(values)
            tested[key] = {"mean": float(np.mean(values)), "ci95": [low, high],
                           "interval": "percentile bootstrap over test images (10000, seed 0)"}
    test = (metrics or {}).get("test", {})
    for key in ("dice_micro", "iou_micro", "hd95", "n_images"):
        if key in test:
            tested[key] = test[key]
    res, data = config.get("resolution", {}), config.get("dataset", {})
    model = config.get("model", {})
    exported_with = {"segbench": __version__, "torch": torch.__version__}
    for package in ("onnx", "onnxruntime"):
        try:
            exported_with[package] = version(package)
        except PackageNotFoundError:
            pass
    return {
        "model": {k: model.get(k) for k in ("name", "arch", "encoder") if model.get(k) is not None}
                 | {"params": (metrics or {}).get("model", {}).get("params")},
        "classes": int(info["output"]["shape"][1]),
        "task": task_of(data).describe(),
        "input": info["input"],
        "preprocessing": {
            "resize": f"to {res.get('height')}x{res.get('width')} (the training resolution): "
                      "cv2.INTER_AREA when shrinking, bilinear when enlarging; resize the "
                      "probabilities back (bilinear) and threshold them",
            "channels": int(data.get("channels", 3)),
            "scale": "8-bit values / 255 to [0, 1]",
            "normalisation": _normalisation_text(info["normalisation"]),
            "padding": "inside the model, to its multiple (reflection), cropped back",
        },
        "output": info["output"],
        "threshold": float(config.get("eval", {}).get("threshold", 0.5)),
        "training_data": {"dataset": data.get("name"), "root": data.get("root"),
                          "split_fingerprint": split.get("fingerprint"),
                          "split_seed": split.get("split_seed"), "counts": split.get("counts")},
        "test_metrics": tested,
        "trained_with": (metrics or {}).get("versions"),
        "exported_with": exported_with,
    }


def card_markdown(info: dict, card: dict) -> str:
    """The model card's short Markdown."""
    metrics = card["test_metrics"]

    def metric(key: str) -> str:
        m = metrics.get(key)
        return (f"{m['mean']:.4f} (95% CI {m['ci95'][0]:.4f}-{m['ci95'][1]:.4f})"
                if isinstance(m, dict) else "-")

    shape = " x ".join(str(s) for s in info["input"]["shape"])
    data = card["training_data"]
    return "\n".join([
        f"# Model card: {Path(info['file']).name}", "",
        f"- **Model**: {', '.join(f'{k} {v}' for k, v in card['model'].items() if v is not None)}",
        f"- **Format**: {info['format']} ({', '.join(info.get('dynamic', ['batch']))} free); "
        f"checked with {info.get('checked_with')}",
        f"- **Input**: `image`, float32 {shape}, values in [0, 1] "
        f"({card['preprocessing']['scale']})",
        f"- **Resize**: {card['preprocessing']['resize']}",
        f"- **Normalisation**: {card['preprocessing']['normalisation']}",
        f"- **Output**: `logits` {' x '.join(str(s) for s in info['output']['shape'])}; "
        f"foreground where {info['output']['foreground']}",
        f"- **Training data**: {data['dataset']} at `{data['root']}`, split {data['counts']} "
        f"(fingerprint {data['split_fingerprint']}, split_seed {data['split_seed']})",
        f"- **Test metrics** ({metrics.get('n_images', '?')} images): Dice {metric('dice')}, "
        f"IoU {metric('iou')}",
        f"- **Versions**: exported with "
        f"{', '.join(f'{k} {v}' for k, v in card['exported_with'].items())}; "
        f"trained with torch {(card['trained_with'] or {}).get('torch', '?')}",
        f"- **Run**: `{info['run_dir']}` ({info['checkpoint']}.pt, epoch {info['epoch']})", ""])


def _normalisation_text(norm: dict) -> str:
    if norm.get("per_image"):
        return ("inside the model, each image by its own statistics: every channel to mean 0 and "
                f"standard deviation 1 over its pixels (the deviation floored at {MIN_STD})")
    return f"inside the model: (x - mean) / std, mean {norm['mean']}, std {norm['std']}"
