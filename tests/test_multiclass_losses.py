"""Every loss's multiclass and multilabel form: ignored pixels count in nothing, a perfect
prediction costs (nearly) nothing, gradients are finite, losses without such a form are refused
in one line, and binary losses are the very objects they were before tasks existed."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT
from segbench import SegbenchError
from segbench.losses import LOSSES, build_loss, loss_target
from segbench.registry import accepts
from segbench.task import IGNORE, task_of

LOSS_DIR = ROOT / "configs" / "loss"
MC = task_of({"task": "multiclass", "classes": {0: "background", 1: "shaft", 2: "tip"},
              "ignore_index": 255})
ML = task_of({"task": "multilabel", "classes": ["a", "b"], "ignore_index": 255})
WITH_FORM = sorted(n for n in LOSSES.names() if accepts(LOSSES.get(n), "task"))
WITHOUT = sorted(set(LOSSES.names()) - set(WITH_FORM))


def build(name: str, task, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(LOSS_DIR / f"{name}.yaml"), overrides)
    return build_loss(cfg, {"task": task})


def multiclass_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (2, 1, 12, 12), generator=g).to(torch.uint8)
    labels[0, 0, :3, :3] = IGNORE
    return labels


def perfect_logits(target: torch.Tensor, channels: int) -> torch.Tensor:
    t = target.clone()
    t[t == IGNORE] = 0
    return torch.nn.functional.one_hot(t.long(), channels).permute(0, 3, 1, 2).float() * 40 - 20


def test_the_task_forms_cover_the_issue_list():
    assert {"ce", "bce", "dice", "bce_dice", "focal", "tversky", "focal_tversky", "lovasz",
            "jaccard", "log_cosh_dice"} <= set(WITH_FORM)


@pytest.mark.parametrize("name", [n for n in WITH_FORM if n != "bce"])
def test_multiclass_forms_finite_small_when_perfect_and_blind_to_ignored_pixels(name):
    loss_fn = build(name, MC)
    masks = multiclass_batch()
    target = loss_target(masks, MC)
    assert target.shape == (2, 12, 12) and target.dtype == torch.long
    logits = torch.randn(2, 3, 12, 12, requires_grad=True)
    value = loss_fn(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    # Ignored pixels get no gradient: what is predicted there cannot matter.
    assert logits.grad[0, :, :3, :3].abs().max() == 0
    assert loss_fn(perfect_logits(target, 3), target) < 0.05


@pytest.mark.parametrize("name", [n for n in WITH_FORM if n != "ce"])
def test_multilabel_forms_with_overlap(name):
    loss_fn = build(name, ML)
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(2, 2, 12, 12, generator=g) < 0.4).to(torch.uint8)
    masks[:, 1] |= masks[:, 0]  # overlapping classes
    masks[1, :, :2, :2] = IGNORE
    target = loss_target(masks, ML)
    logits = torch.randn(2, 2, 12, 12, requires_grad=True)
    value = loss_fn(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert logits.grad[1, :, :2, :2].abs().max() == 0
    perfect = (target.clamp(max=1) * 40 - 20)
    assert loss_fn(perfect, target) < 0.05


def test_ce_options_and_refusals():
    weighted = build("ce", MC, class_weights=[0.0, 1.0, 1.0])
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1
    logits = torch.zeros(1, 3, 4, 4)
    # Background weighted 0: only the one shaft pixel counts.
    assert weighted(logits, target) == pytest.approx(torch.log(torch.tensor(3.0)).item())
    with pytest.raises(SegbenchError, match="3 weights"):
        build("ce", MC, class_weights=[1.0, 1.0])
    with pytest.raises(SegbenchError, match="use loss=bce"):
        build("ce", None)
    with pytest.raises(SegbenchError, match="loss=ce"):
        build("bce", MC)


@pytest.mark.parametrize("name", WITHOUT)
def test_losses_without_a_multiclass_form_are_refused(name):
    with pytest.raises(SegbenchError, match=f"loss {name} has no multiclass form; use one of"):
        build(name, MC)


def test_bce_dice_on_multiclass_is_ce_plus_dice():
    loss_fn = build("bce_dice", MC)
    kinds = [type(m).__name__ for m in loss_fn.terms]
    assert kinds == ["CrossEntropyLoss", "DiceLoss"]


def test_binary_losses_unchanged_by_the_task():
    binary = task_of({})
    for name in ("bce", "bce_dice", "dice", "focal"):
        torch.manual_seed(0)
        logits = torch.randn(2, 1, 8, 8)
        target = (torch.rand(2, 1, 8, 8) > 0.5).float()
        a = build(name, None)(logits, target)
        b = build(name, binary)(logits, target)
        assert torch.equal(a, b)
    assert type(build("bce", binary)).__name__ == "BCEWithLogitsLoss"
