"""Optimizers and LR schedules of the config groups: each builds from its YAML and steps; the
per-step schedules follow their formulas; a schedule saved mid-run (weights_only) and loaded
into a fresh one continues exactly as an uninterrupted one."""

from __future__ import annotations

import io
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT
from segbench import SegbenchError
from segbench.optim import build_optimizer, build_scheduler, list_schedulers

OPTIMIZERS = sorted(p.stem for p in (ROOT / "configs" / "optimizer").glob("*.yaml"))
# auto.yaml is no schedule: it stands for the dataset's own (segbench.commands.auto_options).
SCHEDULE_FILES = sorted(p.stem for p in (ROOT / "configs" / "scheduler").glob("*.yaml")
                        if p.stem != "auto")
EPOCHS, STEPS = 4, 5


def yaml(group: str, name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(ROOT / "configs" / group / f"{name}.yaml"), overrides)


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def test_every_scheduler_has_a_documented_yaml():
    assert SCHEDULE_FILES == list_schedulers()
    for name in SCHEDULE_FILES:
        assert (ROOT / "configs" / "scheduler" / f"{name}.yaml").read_text().startswith("#")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_from_its_yaml_and_steps(name):
    m = model()
    cfg = yaml("optimizer", name)
    opt = build_optimizer(cfg, m.parameters())
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(cfg.weight_decay)
    before = m.weight.detach().clone()
    m(torch.ones(2, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, m.weight)


def test_sgd_takes_momentum_and_nesterov_and_refuses_nesterov_without_momentum():
    opt = build_optimizer(yaml("optimizer", "sgd"), model().parameters())
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is True
    with pytest.raises(SegbenchError, match="sgd"):
        build_optimizer(yaml("optimizer", "sgd", momentum=0.0), model().parameters())


def run_steps(opt, schedule, steps: int, start: int = 0) -> list[float]:
    """The LR of each step, stepping the schedule as the trainer does (per batch, per epoch)."""
    lrs = []
    for step in range(start, start + steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step_batch()
        if (step + 1) % STEPS == 0:
            schedule.step_epoch({"val_iou": 0.5})
    return lrs


def lr_curve(name: str, steps: int = EPOCHS * STEPS, **overrides) -> list[float]:
    opt = build_optimizer(OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.9}),
                          model().parameters())
    schedule = build_scheduler(yaml("scheduler", name, **overrides), opt, max_epochs=EPOCHS,
                               steps_per_epoch=STEPS)
    return run_steps(opt, schedule, steps)


def test_poly_follows_its_formula():
    total = EPOCHS * STEPS
    assert lr_curve("poly", power=2.0) == pytest.approx(
        [0.1 * (1 - t / total) ** 2 for t in range(total)])
    with_floor = lr_curve("poly", power=1.0, min_lr=0.01)
    assert with_floor == pytest.approx([0.01 + 0.09 * (1 - t / total) for t in range(total)])


def test_onecycle_rises_to_the_optimizer_lr_then_anneals():
    lrs = lr_curve("onecycle")
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1, rel=1e-6)
    assert peak == round(0.3 * EPOCHS * STEPS) - 1
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1], strict=True))
    assert all(a > b for a, b in zip(lrs[peak:-1], lrs[peak + 1:], strict=True))
    assert lrs[-1] < 0.1 / 25 / 100


def test_onecycle_leaves_momentum_alone_unless_asked():
    opt = build_optimizer(OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.9}),
                          model().parameters())
    build_scheduler(yaml("scheduler", "onecycle"), opt, max_epochs=2, steps_per_epoch=3)
    assert opt.param_groups[0]["momentum"] == 0.9
    build_scheduler(yaml("scheduler", "onecycle", cycle_momentum=True), opt, max_epochs=2,
                    steps_per_epoch=3)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    plain = build_optimizer(OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.0,
                                              "nesterov": False}), model().parameters())
    with pytest.raises(SegbenchError, match="scheduler"):
        build_scheduler(yaml("scheduler", "onecycle", pct_start=1.5), plain, max_epochs=2,
                        steps_per_epoch=3)


@pytest.mark.parametrize("name", SCHEDULE_FILES)
def test_a_schedule_saved_mid_run_resumes_exactly(name):
    total = EPOCHS * STEPS

    def build(m):
        opt = build_optimizer(OmegaConf.create({"name": "adam", "lr": 0.1}), m.parameters())
        return opt, build_scheduler(yaml("scheduler", name), opt, max_epochs=EPOCHS,
                                    steps_per_epoch=STEPS)

    opt, schedule = build(model())
    first = run_steps(opt, schedule, 2 * STEPS)  # interrupted after two epochs
    buffer = io.BytesIO()
    torch.save({"scheduler": schedule.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain values only
    opt2, schedule2 = build(model())
    opt2.load_state_dict(state["optimizer"])
    schedule2.load_state_dict(state["scheduler"])
    second = run_steps(opt2, schedule2, total - 2 * STEPS, start=2 * STEPS)
    uninterrupted = run_steps(*build(model()), total)
    assert first + second == uninterrupted
    assert all(math.isfinite(v) and v > 0 for v in uninterrupted)


def test_unknown_scheduler_lists_the_choices():
    opt = build_optimizer(OmegaConf.create({"name": "adam", "lr": 0.1}), model().parameters())
    with pytest.raises(SegbenchError, match="onecycle"):
        build_scheduler(OmegaConf.create({"name": "exp"}), opt, max_epochs=2, steps_per_epoch=2)
