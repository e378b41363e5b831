"""\"Did you mean ...?\" for names a user types: config keys, options, registry entries and
smp encoders. Light on purpose: it answers before torch loads.

smp's encoder names need smp imported (seconds: it imports torch); they are kept in a small
file in the cache folder per smp version, so a mistyped `model.encoder` is refused at once
after the first time.
"""

from __future__ import annotations

import difflib
import os
from importlib.metadata import version
from pathlib import Path

from segbench import SegbenchError


def _plain(name: str) -> str:
    """A name as people misspell it: `unet++` is `unetpp`, `U-Net` is `unet`."""
    return name.lower().replace("+", "p").replace("-", "").replace("_", "")


def closest(word: str, names, n: int = 3) -> list[str]:
    """The few names nearest to a mistyped `word` (difflib), a spelling match first."""
    names = list(dict.fromkeys(names))
    same = [x for x in names if _plain(x) == _plain(word)]
    near = difflib.get_close_matches(word, names, n=n, cutoff=0.6)
    if not near:  # `resnet1` is far from nothing by ratio but starts like resnet18
        near = difflib.get_close_matches(word.lower(), [x.lower() for x in names], n=n, cutoff=0.5)
        near = [next(x for x in names if x.lower() == m) for m in near]
    return list(dict.fromkeys(same + near))[:n]


def _encoder_cache() -> Path:
    root = os.environ.get("SEGBENCH_CACHE") or "~/.cache/segbench"
    return Path(root).expanduser() / f"smp-encoders-{version('segmentation_models_pytorch')}.txt"


def smp_encoder_names() -> list[str]:
    """smp's encoder names, from the cache file when there is one (else from smp, then kept)."""
    try:
        path = _encoder_cache()
    except (ImportError, ValueError):
        path = None
    try:
        names = path.read_text().split() if path is not None else []
        if names:
            return names
    except OSError:
        pass  # not kept yet: ask smp
    # smp imports torch (seconds): loaded only here, when the cache file cannot answer.
    from segmentation_models_pytorch.encoders import encoders

    names = sorted(encoders)
    if path is not None:
        try:  # a cache that cannot be written only costs the next refusal its seconds
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text("\n".join(names) + "\n")
            tmp.replace(path)
        except OSError:
            pass
    return names


def check_encoder(name: str) -> None:
    """A name that is not an smp encoder (nor `tu-<timm model>`) is one line with the closest
    few names, not smp's list of ninety."""
    name = str(name)
    if name.startswith("tu-"):
        return  # timm's names are checked by timm when the model is built
    names = smp_encoder_names()
    if name in names:
        return
    near = closest(name, names, 4)
    raise SegbenchError(
        f"model.encoder={name}: not an smp encoder; "
        + (f"closest: {', '.join(near)}; " if near else "")
        + "e.g. resnet34, efficientnet-b0, or tu-<timm model name> "
        "(python -c \"import segmentation_models_pytorch as smp; "
        "print(smp.encoders.get_encoder_names())\" lists all)")
