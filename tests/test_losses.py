"""Every loss of configs/loss: finite with finite gradients on empty masks, full masks and perfect
predictions; its value at a perfect prediction; its value on a hand-computed example; a real
model takes optimizer steps with it. Plus the exact distance maps the distance losses use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import ndimage

from conftest import ROOT, TINY
from segbench import SegbenchError, config_dir
from segbench.losses import build_loss, foreground_share, list_losses, set_epoch
from segbench.metrics.distance import distance_to, signed_distance

LOSS_DIR = ROOT / "configs" / "loss"
ALL_LOSSES = sorted(p.stem for p in LOSS_DIR.glob("*.yaml"))
MULTICLASS_ONLY = {"ce"}  # tests/test_multiclass_losses.py covers it
LOSSES = [n for n in ALL_LOSSES if n not in MULTICLASS_ONLY]
PERFECT = 20.0  # |logit| of a confident, right prediction: sigmoid(20) is 1.0 in float32


def loss_from_yaml(name: str, context: dict | None = None, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(LOSS_DIR / f"{name}.yaml"), overrides)
    return build_loss(cfg, {"train_masks": _quarter(), **(context or {})})


def _quarter() -> np.ndarray:
    m = np.zeros((1, 4, 4), np.uint8)
    m[0, :2, :2] = 1
    return m


def blob_targets(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        r, c = rng.integers(2, size - 6, 2)
        out[i, 0, r:r + rng.integers(2, 6), c:c + rng.integers(2, 6)] = 1
    return torch.from_numpy(out)


def value_and_grad(loss_fn, logits: torch.Tensor, target: torch.Tensor):
    logits = logits.clone().requires_grad_(True)
    value = loss_fn(logits, target)
    value.backward()
    return value.detach(), logits.grad


def test_every_loss_has_a_documented_yaml_and_the_registry_matches():
    assert ALL_LOSSES == list_losses()
    for name in ALL_LOSSES:
        text = (LOSS_DIR / f"{name}.yaml").read_text()
        assert text.startswith("#"), f"{name}.yaml must open with a comment stating its formula"
        assert OmegaConf.load(LOSS_DIR / f"{name}.yaml").name == name


def _cases():
    rng = np.random.default_rng(1)
    random_logits = torch.from_numpy(rng.normal(0, 3, (4, 1, 16, 16)).astype(np.float32))
    blobs = blob_targets()
    empty, full = torch.zeros_like(blobs), torch.ones_like(blobs)
    mixed = blobs.clone()
    mixed[1] = 0  # one image of the batch has nothing to find
    mixed[2] = 1
    return {
        "empty masks": (random_logits, empty),
        "full masks": (random_logits, full),
        "mixed masks": (random_logits, mixed),
        "perfect on blobs": (PERFECT * (2 * blobs - 1), blobs),
        "perfect on empty": (-PERFECT * torch.ones_like(blobs), empty),
        "perfect on full": (PERFECT * torch.ones_like(blobs), full),
        "perfect on mixed": (PERFECT * (2 * mixed - 1), mixed),
        "confidently wrong": (-PERFECT * (2 * blobs - 1), blobs),
    }


# The boundary term only counts from the second epoch under the default schedule: a constant
# weight makes it count in these tests.
VARIANTS = [(n, {}) for n in LOSSES] + [
    ("boundary", {"schedule": "constant", "max_weight": 0.5}),
    ("boundary", {"schedule": "constant", "max_weight": 1.0, "normalize": False}),
    ("shape_aware", {"normalize": False}),
    ("focal_tversky", {"gamma": 3.0}),
    ("lovasz", {"per_image": True}),
]


@pytest.mark.parametrize(("name", "overrides"), VARIANTS,
                         ids=[f"{n}{o or ''}" for n, o in VARIANTS])
def test_finite_with_finite_gradients_and_zero_at_a_perfect_prediction(name, overrides):
    loss_fn = loss_from_yaml(name, **overrides)
    for case, (logits, target) in _cases().items():
        value, grad = value_and_grad(loss_fn, logits, target)
        assert torch.isfinite(value), f"{name} on {case}: {value}"
        assert torch.isfinite(grad).all(), f"{name} on {case}: non-finite gradient"
        assert value >= -1e-7, f"{name} on {case}: negative loss {value}"
        if case.startswith("perfect"):
            assert value < 1e-5, f"{name} at a perfect prediction ({case}) is {value}, not 0"
    wrong, _ = value_and_grad(loss_fn, *_cases()["confidently wrong"])
    assert wrong > 0.1, f"{name} does not penalise a confidently wrong prediction ({wrong})"


# One hand-computable batch: four pixels, logits x and target y.
X = np.array([2.0, -1.0, 0.5, 1.0])
Y = np.array([1.0, 0.0, 0.0, 1.0])
P = 1 / (1 + np.exp(-X))


def _bce(pos_weight=1.0):
    return float(np.mean(-(pos_weight * Y * np.log(P) + (1 - Y) * np.log(1 - P))))


def _dice(smooth=1.0):
    # smp >= 0.4 computes Dice as the Tversky index with alpha = beta = 1/2: smooth counts twice.
    return 1 - (2 * np.sum(P * Y) + 2 * smooth) / (P.sum() + Y.sum() + 2 * smooth)


def _tversky(alpha=0.3, beta=0.7, smooth=1.0):
    tp, fp, fn = np.sum(P * Y), np.sum(P * (1 - Y)), np.sum((1 - P) * Y)
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def _focal(alpha=0.25, gamma=2.0):
    pt = np.where(Y == 1, P, 1 - P)
    at = np.where(Y == 1, alpha, 1 - alpha)
    return float(np.mean(-at * (1 - pt) ** gamma * np.log(pt)))


def _lovasz_hinge():
    # Berman et al.: errors e = 1 - x(2y - 1) sorted down; the Jaccard loss of the set M of the
    # first k pixels is 1 - |G \ M| / |G u M|; the loss is sum relu(e_k) * (J(M_k) - J(M_k-1)).
    e = 1 - X * (2 * Y - 1)
    order = np.argsort(-e)
    g = set(np.flatnonzero(Y))

    def jaccard_loss(m: set) -> float:
        return 1 - len(g - m) / len(g | m) if g | m else 0.0

    total, prev, chosen = 0.0, 0.0, set()
    for i in order:
        chosen.add(int(i))
        j = jaccard_loss(chosen)
        total += max(e[i], 0) * (j - prev)
        prev = j
    return total


HAND = {
    "bce": _bce(),
    "weighted_bce": _bce(pos_weight=3.0),
    "dice": _dice(),
    "bce_dice": 0.5 * _bce() + 0.5 * _dice(),
    "jaccard": 1 - (np.sum(P * Y) + 1) / (P.sum() + Y.sum() - np.sum(P * Y) + 1),
    "focal": _focal(),
    "tversky": _tversky(),
    "focal_tversky": _tversky() ** 0.75,
    "log_cosh_dice": math.log(math.cosh(_dice())),
    "lovasz": _lovasz_hinge(),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_value_on_a_hand_computed_example(name):
    loss_fn = loss_from_yaml(name, **({"pos_weight": 3.0} if name == "weighted_bce" else {}))
    logits = torch.tensor(X, dtype=torch.float32).view(1, 1, 2, 2)
    target = torch.tensor(Y, dtype=torch.float32).view(1, 1, 2, 2)
    assert loss_fn(logits, target).item() == pytest.approx(HAND[name], rel=1e-5)


# 4x4 target, a 2x2 square in the top-left corner, and its signed distance map worked out by
# hand: outside, the distance to the nearest foreground pixel; inside, minus (the distance to
# the nearest background pixel - 1).
SQUARE = np.zeros((4, 4), np.float32)
SQUARE[:2, :2] = 1
R2, R5, R8 = math.sqrt(2), math.sqrt(5), math.sqrt(8)
PHI = np.array([[-1, 0, 1, 2],
                [0, 0, 1, 2],
                [1, 1, R2, R5],
                [2, 2, R5, R8]], np.float32)
LOGITS_4x4 = np.linspace(-2, 2, 16, dtype=np.float32).reshape(4, 4)


def test_signed_distance_matches_the_hand_computed_map():
    phi = signed_distance(torch.from_numpy(SQUARE)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(phi, PHI, atol=1e-6)
    assert (signed_distance(torch.zeros(1, 1, 4, 4)) == 0).all()  # no contour: no distances
    assert (signed_distance(torch.ones(1, 1, 4, 4)) == 0).all()


def test_boundary_and_shape_aware_on_a_hand_computed_example():
    p = 1 / (1 + np.exp(-LOGITS_4x4.astype(np.float64)))
    y = SQUARE.astype(np.float64)
    diag = math.hypot(4, 4)
    dice = 1 - (2 * np.sum(p * y) + 2) / (p.sum() + y.sum() + 2)
    boundary_term = np.mean(PHI / diag * (p - y))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    logits = torch.from_numpy(LOGITS_4x4)[None, None]
    target = torch.from_numpy(SQUARE)[None, None]

    loss = loss_from_yaml("boundary", schedule="constant", max_weight=0.3)
    assert loss(logits, target).item() == pytest.approx(0.7 * dice + 0.3 * boundary_term, rel=1e-5)
    raw = loss_from_yaml("boundary", schedule="constant", max_weight=1.0, normalize=False)
    assert raw(logits, target).item() == pytest.approx(np.mean(PHI * (p - y)), rel=1e-5)
    shape = loss_from_yaml("shape_aware", distance_weight=2.0)
    expected = np.mean((1 + 2.0 * np.abs(PHI) / diag) * bce)
    assert shape(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # The constant that makes the boundary term 0 at the optimum leaves Kervadec's gradient as is.
    x = logits.clone().requires_grad_(True)
    raw(x, target).backward()
    np.testing.assert_allclose(x.grad[0, 0].numpy(), PHI * p * (1 - p) / 16, rtol=1e-5, atol=1e-8)


def test_boundary_weight_follows_the_epoch_schedule_through_nested_losses():
    rebalance = loss_from_yaml("boundary")
    linear = loss_from_yaml("boundary", schedule="linear", max_weight=0.8)
    holder = torch.nn.ModuleList([rebalance, linear])  # set_epoch reaches nested modules
    weights = []
    for epoch in (1, 2, 5, 200):
        set_epoch(holder, epoch, 5)
        weights.append((rebalance.weight, linear.weight))
    assert [w[0] for w in weights] == pytest.approx([0.0, 0.01, 0.04, 0.99])  # the paper's
    assert [w[1] for w in weights[:3]] == pytest.approx([0.0, 0.2, 0.8])
    # At weight 0 the loss is the region loss alone.
    set_epoch(holder, 1, 5)
    logits, target = torch.from_numpy(LOGITS_4x4)[None, None], torch.from_numpy(SQUARE)[None, None]
    region = loss_from_yaml("dice")
    assert rebalance(logits, target).item() == pytest.approx(region(logits, target).item())


def test_weighted_bce_balances_the_training_masks_foreground_share(tmp_path):
    masks = np.lib.format.open_memmap(tmp_path / "masks.npy", mode="w+", dtype=np.uint8,
                                      shape=(130, 8, 8))  # > one 64-image chunk
    masks[:, :2, :] = 1  # 25% foreground
    masks.flush()
    readonly = np.load(tmp_path / "masks.npy", mmap_mode="r")
    assert foreground_share(readonly) == pytest.approx(0.25)
    loss = build_loss(OmegaConf.load(LOSS_DIR / "weighted_bce.yaml"), {"train_masks": readonly})
    assert loss.pos_weight.item() == pytest.approx(3.0)
    with pytest.raises(SegbenchError, match="pos_weight"):
        build_loss(OmegaConf.load(LOSS_DIR / "weighted_bce.yaml"),
                   {"train_masks": np.zeros((2, 4, 4), np.uint8)})


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "dice", "smoth": 1.0}, "smoth"),
    ({"name": "nope"}, "unknown loss"),
    ({"name": "focal", "gamma": 0.5}, "gamma"),
    ({"name": "tversky", "alpha": 0, "beta": 0}, "alpha"),
    ({"name": "boundary", "schedule": "sometimes"}, "schedule"),
    ({"name": "boundary", "region": {"name": "boundary"}}, "region"),
])
def test_bad_loss_options_name_the_problem(spec, message):
    with pytest.raises(SegbenchError, match=message):
        build_loss(OmegaConf.create(spec), {})


def test_a_partial_loss_config_takes_its_defaults_from_the_yaml_only():
    # Defaults live in configs/loss/*.yaml: a nested or hand-written spec is completed from there.
    focal = build_loss(OmegaConf.create({"name": "focal"}), {})
    own = OmegaConf.load(LOSS_DIR / "focal.yaml")
    assert focal.focal_loss_fn.keywords["alpha"] == own.alpha
    assert focal.focal_loss_fn.keywords["gamma"] == own.gamma
    boundary = build_loss(OmegaConf.create({"name": "boundary",
                                            "region": {"name": "weighted_bce"}}),
                          {"train_masks": _quarter()})
    # pos_weight: auto, from the masks
    assert boundary.region.pos_weight.item() == pytest.approx(3.0)


@pytest.mark.parametrize("shape", [(5, 7), (7, 5), (1, 9), (33, 64), (64, 33)])
def test_device_distance_maps_equal_scipy(shape):
    rng = np.random.default_rng(sum(shape))
    masks = rng.random((6, *shape)) < np.array([0.0, 0.01, 0.05, 0.3, 0.9, 1.0])[:, None, None]
    for method in ("torch", "scipy"):
        d = distance_to(torch.from_numpy(masks), method=method).numpy()
        for m, got in zip(masks, d, strict=True):
            if m.any():
                np.testing.assert_allclose(got, ndimage.distance_transform_edt(~m), atol=1e-5)
            else:
                assert np.isinf(got).all()


def _quoted(overrides):
    # Hydra refuses a config-group choice that parses as a number unless it is quoted.
    return [o.replace("resolution=64", "resolution='64'") for o in overrides]


def small_net() -> torch.nn.Module:
    # A few convolutions: the losses' gradients reach real weights; the smp models themselves
    # train with these losses in the CLI tests and by hand (README).
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 1, 1))


@pytest.mark.parametrize("name", LOSSES)
def test_a_model_takes_optimizer_steps_with_every_loss_of_the_config_group(name):
    from hydra import compose, initialize_config_dir

    from segbench.optim import build_optimizer

    with initialize_config_dir(str(Path(config_dir())), version_base="1.3"):
        cfg = compose("train", overrides=[*_quoted(TINY), f"loss={name}"])  # as `train loss=<name>`
    model = small_net()
    targets = blob_targets(4, 32, seed=2)
    targets[3] = 0  # an image without foreground in the batch
    loss_fn = build_loss(cfg.loss, {"train_masks": targets[:, 0].numpy().astype(np.uint8)})
    set_epoch(loss_fn, 2, 2)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    images = targets.repeat(1, 3, 1, 1) * 0.6 + torch.rand(4, 3, 32, 32) * 0.4
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        loss = loss_fn(model(images), targets)
        assert torch.isfinite(loss), f"{name}: loss {loss}"
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
