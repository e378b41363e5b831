"""Pretrained encoder weights: use the cached copy, or fail within seconds when it cannot be
fetched.

smp and timm download weights from the Hugging Face Hub (or, for some timm models, a plain URL)
the first time they are asked for, and then read them from the local cache. Without a network
their downloads wait on connection timeouts and retries; so before building a model, segbench
looks for the files in the cache and, when they are missing, checks with one short request that
the hub can be reached at all.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import torch

from segbench import SegbenchError

# smp and timm take seconds to import (measured: more than torch itself): they load in the
# functions that need them, when a model with pretrained weights is built.

PROBE_TIMEOUT_S = float(os.environ.get("SEGBENCH_HUB_PROBE_TIMEOUT", 4))


def _weight_sources(encoder: str, weights: str) -> list[tuple[str, str, str | None]]:
    """(kind, where, filename-or-revision) of the files a pretrained encoder loads: ("hf", repo_id,
    revision) entries for the Hub, ("url", url, None) for plain downloads. Raises for unknown
    encoders or weights (smp's own error would be a KeyError)."""
    import segmentation_models_pytorch as smp

    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise SegbenchError(f"timm model {encoder[3:]!r} has no pretrained weights; "
                                "use model.encoder_weights=null or another encoder")
        if cfg.hf_hub_id:
            return [("hf", cfg.hf_hub_id.split("@")[0], None)]
        # timm types url as str | (str, str); a downloaded one is a plain URL (timm's builder
        # hands it to torch.hub as one)
        return [("url", cast(str, cfg.url), None)]
    encoders = smp.encoders.encoders
    if encoder not in encoders:
        return []  # smp's own error names the problem when the model is built
    settings = encoders[encoder]["pretrained_settings"]
    if weights not in settings:
        raise SegbenchError(f"encoder {encoder} has no {weights!r} weights; available: "
                            f"{', '.join(settings)} (or model.encoder_weights=null)")
    return [("hf", settings[weights]["repo_id"], settings[weights].get("revision"))]


def _cached(kind: str, where: str, revision: str | None) -> bool:
    if kind == "url":
        name = Path(urlparse(where).path).name
        return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()
    from huggingface_hub import try_to_load_from_cache  # optional extra

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(where, filename, revision=revision)
        if isinstance(found, str):
            return True
    return False


def _probe_url(kind: str, where: str, revision: str | None) -> str:
    if kind == "url":
        return where
    from huggingface_hub import constants  # optional extra

    return f"{constants.ENDPOINT}/api/models/{where}"


def _reachable(kind: str, url: str, timeout: float) -> tuple[bool, str]:
    """One HEAD request through the client (and so the proxy settings) the download would use."""
    try:
        if kind == "hf":
            from huggingface_hub import get_session  # optional extra

            status = get_session().head(url, timeout=timeout, follow_redirects=False).status_code
            if status >= 400:  # something answered, but not a hub that has these weights
                return False, f"HTTP {status} from {url}"
        else:
            request = urllib.request.Request(url, method="HEAD")
            urllib.request.urlopen(request, timeout=timeout).close()
        return True, ""
    except Exception as err:  # any failure to get an answer means: no download either
        if type(err).__name__ == "HTTPError":  # urllib: the server answered, with an error status
            return True, ""
        return False, f"{type(err).__name__}: {err}"[:200]


def weights_error(encoder: str, weights: str, reason: str) -> SegbenchError:
    from huggingface_hub import constants  # optional extra

    return SegbenchError(
        f"pretrained {weights} weights for encoder {encoder} are not in the local cache and cannot "
        f"be downloaded ({reason}). Either train from scratch with model.encoder_weights=null, or "
        f"fetch the weights once on a machine with a network: run the same command there (or "
        f"`python -c \"import segmentation_models_pytorch as smp; smp.Unet('{encoder}', "
        f"encoder_weights='{weights}')\"`), then copy the Hugging Face cache folder "
        f"({constants.HF_HUB_CACHE}; set HF_HOME to move it) and the torch hub folder "
        f"(~/.cache/torch/hub) to this machine. Offline, set HF_HUB_OFFLINE=1 so cached weights "
        "load without any network check"
    )


def ensure_encoder_weights(encoder: str, weights: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Return when the weights are cached or downloadable; raise a SegbenchError within about
    `timeout` seconds when they are neither."""
    from huggingface_hub import constants  # optional extra

    sources = _weight_sources(encoder, weights)
    missing = [s for s in sources if not _cached(*s)]
    if not missing:
        return
    if constants.HF_HUB_OFFLINE and any(kind == "hf" for kind, _, _ in missing):
        raise weights_error(encoder, weights, "HF_HUB_OFFLINE=1 is set")
    for source in missing:
        url = _probe_url(*source)
        ok, why = _reachable(source[0], url, timeout)
        if not ok:
            raise weights_error(encoder, weights,
                                f"no usable answer from {urlparse(url).netloc}: {why}")
