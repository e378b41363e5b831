"""encoder_weights=imagenet without the weights and without a network fails within seconds, with
a message that says how to get the weights or how to do without them."""

from __future__ import annotations

import time

import pytest

from conftest import run_subprocess
from segbench import SegbenchError
from segbench.models import pretrained


def _train_imagenet(tmp_path, env):
    """Any command that builds the model checks first; `info` is the cheapest (no data). In a
    new process: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported."""
    start = time.time()
    proc = run_subprocess("info", "model.encoder=resnet18", "model.encoder_weights=imagenet",
                          "resolution=64", "latency=false", cwd=tmp_path, check=False, env=env,
                          timeout=120)
    return proc, time.time() - start


def _assert_clear_failure(proc, seconds):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "model.encoder_weights=null" in out and "HF_HUB_OFFLINE" in out
    assert "Traceback" not in out
    assert seconds < 45  # interpreter start, imports and the failing check; never a retry loop


@pytest.mark.e2e
def test_offline_mode_fails_at_once(tmp_path):
    proc, seconds = _train_imagenet(tmp_path, {"HF_HUB_OFFLINE": "1"})
    _assert_clear_failure(proc, seconds)
    assert "HF_HUB_OFFLINE=1 is set" in proc.stdout + proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("env", [
    {"HF_ENDPOINT": "http://10.255.255.1"},  # an address no packet reaches
    {"HTTPS_PROXY": "http://10.255.255.1:3128", "HTTP_PROXY": "http://10.255.255.1:3128",
     "https_proxy": "http://10.255.255.1:3128", "http_proxy": "http://10.255.255.1:3128"},
], ids=["unroutable-endpoint", "unroutable-proxy"])
def test_unreachable_network_fails_within_seconds(tmp_path, env):
    proc, seconds = _train_imagenet(tmp_path, {"HF_HUB_OFFLINE": "0",
                                               "SEGBENCH_HUB_PROBE_TIMEOUT": "3", **env})
    _assert_clear_failure(proc, seconds)


def test_cached_weights_need_no_network(tmp_path, monkeypatch):
    """With the files in the Hugging Face cache layout, the check passes offline, without a
    probe."""
    from huggingface_hub import constants

    [(kind, repo, revision)] = pretrained._weight_sources("resnet18", "imagenet")
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"stub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pretrained, "_reachable", lambda *a, **k: pytest.fail("probed the network"))
    pretrained.ensure_encoder_weights("resnet18", "imagenet")  # no error


def test_unknown_weights_name_the_available_ones():
    with pytest.raises(SegbenchError, match="no 'instagram' weights; available: imagenet"):
        pretrained.ensure_encoder_weights("resnet18", "instagram")


def test_models_restored_from_a_checkpoint_need_no_weights(monkeypatch):
    """eval and export rebuild a run's model and then load its checkpoint: pretrained=False."""
    from huggingface_hub import constants

    from model_cases import SMALL_MODELS, model_cfg
    from segbench.models import build_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = model_cfg({**SMALL_MODELS["unet"], "encoder_weights": "imagenet"}, channels=1)
    with pytest.raises(SegbenchError, match="model.encoder_weights=null"):
        build_model(cfg)
    restored = build_model(cfg, pretrained=False)
    cfg.model.encoder_weights = None
    fresh = build_model(cfg)
    assert {k: v.shape for k, v in restored.state_dict().items()} == {
        k: v.shape for k, v in fresh.state_dict().items()}
