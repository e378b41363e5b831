"""Device, precision and seeding for the training loop (and the RNG states last.pt keeps)."""

from __future__ import annotations

import contextlib
import os
import random
from typing import cast

import numpy as np
import torch

from segbench import SegbenchError

# Set by the packed launcher (hydra_plugins/segbench_packed_launcher) for each job it starts.
PACKED_DEVICE = "SEGBENCH_DEVICE"


def resolve_device(spec: str = "auto") -> torch.device:
    spec = str(spec or "auto")
    if spec == "auto" and os.environ.get(PACKED_DEVICE):  # the GPU slot of a packed sweep's job
        device = torch.device(os.environ[PACKED_DEVICE])
        torch.cuda.set_device(device)
        return device
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SegbenchError(f"trainer.device={spec!r} is not a device; use auto, cpu, cuda, "
                            "cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegbenchError("trainer.device asks for CUDA but no CUDA GPU is available; use "
                            "trainer.device=auto or cpu")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise SegbenchError(f"trainer.device={spec}: only {count} CUDA device(s) present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SegbenchError("trainer.device=mps but MPS is not available; use trainer.device=auto "
                            "or cpu")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """None means fp32. Auto: bf16 on CUDA where supported, else fp16; fp32 on CPU and MPS
    (bf16 autocast was measured slower than fp32 on the 2-core AVX2 CPUs segbench is tested on)."""
    precision = str(precision)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise SegbenchError(f"trainer.precision={precision!r}; use auto, fp32, bf16 or fp16")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type == "cpu":
        raise SegbenchError("trainer.precision=fp16 needs a GPU; on CPU use fp32 (or bf16)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that is a fixed function of its parts (e.g. run seed and epoch)."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0])


def set_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"


# The RNGs' states, for last.pt: a resumed run draws what an uninterrupted one would have.

def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and plain values."""
    # get_state's legacy form (the default): (name, keys, position, has_gauss, cached_gauss)
    _, keys, pos, has_gauss, cached_gauss = cast(tuple[str, np.ndarray, int, int, float],
                                                 np.random.get_state())
    _, py_internal, py_gauss = random.getstate()
    state = {
        "python": list(py_internal),
        "python_gauss": [py_gauss is not None, 0.0 if py_gauss is None else py_gauss],
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_gauss": [int(has_gauss), float(cached_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """The states `rng_state()` saved, wherever torch.load(map_location=...) put their tensors
    (RNG states are CPU byte tensors whatever device they seed)."""
    has_gauss, gauss = state["python_gauss"]
    random.setstate((3, tuple(state["python"]), gauss if has_gauss else None))
    np.random.set_state(("MT19937", state["numpy_keys"].cpu().numpy().astype(np.uint32),
                         state["numpy_pos"], int(state["numpy_gauss"][0]), state["numpy_gauss"][1]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def compile_model(model: torch.nn.Module, setting, device: torch.device) -> torch.nn.Module:
    """torch.compile of the module batches go through, where `trainer.compile` asks for it (auto:
    CUDA only; compiling costs a minute and was not faster on 2 CPU cores). The uncompiled
    module is kept for checkpoints (its state dict has no `_orig_mod.` prefix) and evaluation,
    whose batch shapes vary."""
    if setting is False or (setting == "auto" and device.type != "cuda"):
        return model
    return cast(torch.nn.Module, torch.compile(model))  # a module's compiled form is a module
