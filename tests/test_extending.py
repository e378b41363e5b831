"""A user's own components through `_target_` from a config folder on hydra.searchpath, and the
one registry idiom every component kind shares."""

from __future__ import annotations

import textwrap

import pytest
import torch

from conftest import TINY, read_json, run_cli
from segbench import SegbenchError
from segbench.data import DATASETS, list_datasets
from segbench.losses import LOSSES, build_loss, list_losses
from segbench.models import list_models
from segbench.models.registry import MODELS
from segbench.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, list_optimizers, list_schedulers

USER_CODE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Two convolutions and a stride-2 pooling: needs even input sizes."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(width, 1, 3, padding=1),
                                  nn.Upsample(scale_factor=2))

    def forward(self, x):
        return self.body(x)


class MarginLoss(nn.Module):
    built_with = None

    def __init__(self, margin: float, train_masks=None):
        super().__init__()
        self.margin = margin
        MarginLoss.built_with = (margin, None if train_masks is None else train_masks.shape)

    def forward(self, logits, target):
        return nn.functional.binary_cross_entropy_with_logits(logits, target) + self.margin * 0
'''


@pytest.fixture()
def user_configs(tmp_path, monkeypatch):
    (tmp_path / "mylab_parts.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    configs = tmp_path / "my_configs"
    (configs / "model").mkdir(parents=True)
    (configs / "loss").mkdir()
    (configs / "model" / "tiny.yaml").write_text(textwrap.dedent("""\
        name: tiny
        _target_: mylab_parts.TinyNet
        size_divisor: 2
        in_channels: ${dataset.channels}
        width: 8
        """))
    (configs / "loss" / "margin.yaml").write_text(
        "name: margin\n_target_: mylab_parts.MarginLoss\nmargin: 0.25\n")
    return configs


def test_a_users_model_and_loss_train_through_the_shared_loop(tmp_path, user_configs):
    args = [a for a in TINY if not a.startswith("model.")]
    run_cli("train", *args, f"hydra.searchpath=[file://{user_configs}]", "model=tiny",
            "loss=margin", "resolution.height=63", "resolution.width=64", "hydra.run.dir=run",
            cwd=tmp_path)
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["model"]["name"] == "tiny"
    assert metrics["model"]["params"] == 3 * 8 * 9 + 8 + 8 * 9 + 1
    assert 0 <= metrics["test"]["iou"] <= metrics["test"]["dice"] <= 1
    import mylab_parts

    assert mylab_parts.MarginLoss.built_with[0] == 0.25  # its option, and the training masks
    assert mylab_parts.MarginLoss.built_with[1][1:] == (63, 64)


def test_a_users_run_is_evaluated_and_resumed_only_as_its_user_allows(tmp_path, user_configs):
    args = [a for a in TINY if not a.startswith("model.")]
    search = f"hydra.searchpath=[file://{user_configs}]"
    run_cli("train", *args, search, "model=tiny", "trainer.max_epochs=1", "hydra.run.dir=run",
            cwd=tmp_path)
    refused = run_cli("eval", "run_dir=run", cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert "export SEGBENCH_TRUSTED_MODULES=mylab_parts" in refused.stdout
    allowed = run_cli("eval", "run_dir=run", cwd=tmp_path,
                      env={"SEGBENCH_TRUSTED_MODULES": "mylab_parts"})
    assert "wrote" in allowed.stdout
    # folders not replayed
    again = run_cli("train", "trainer.resume=run", cwd=tmp_path, check=False)
    assert again.returncode == 2 and f"trainer.resume=run '{search}'" in again.stderr
    assert "skipping" in run_cli("train", "trainer.resume=run", search, cwd=tmp_path).stdout


def test_a_users_component_with_a_wrong_option_is_one_line(tmp_path, user_configs):
    args = [a for a in TINY if not a.startswith("model.")]
    proc = run_cli("train", *args, f"hydra.searchpath=[file://{user_configs}]", "model=tiny",
                   "+model.depth=3", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "model tiny has no option depth; its options: in_channels, width" in proc.stdout


def test_an_unimportable_target_names_the_module():
    with pytest.raises(SegbenchError, match="cannot import 'nolab'"):
        build_loss({"name": "x", "_target_": "nolab.Loss"})
    with pytest.raises(SegbenchError, match="torch.optim has no 'Nope'"):
        build_optimizer({"name": "x", "_target_": "torch.optim.Nope", "lr": 0.1},
                        torch.nn.Linear(1, 1).parameters())


def test_optimizer_target_gets_the_parameters():
    opt = build_optimizer({"name": "nadam", "_target_": "torch.optim.NAdam", "lr": 0.01},
                          torch.nn.Linear(2, 1).parameters())
    assert isinstance(opt, torch.optim.NAdam) and opt.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize(("registry", "lister", "group"), [
    (MODELS, list_models, "model"), (LOSSES, list_losses, "loss"),
    (OPTIMIZERS, list_optimizers, "optimizer"), (SCHEDULERS, list_schedulers, "scheduler"),
    (DATASETS, list_datasets, "dataset"),
])
def test_every_registry_lists_its_entries_and_names_them_in_errors(registry, lister, group):
    from segbench import config_dir

    names = lister()
    assert names == sorted(names) and names == registry.names()
    yaml_names = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    assert set(names) <= set(yaml_names)  # every entry has its documented YAML
    suggestion = r"( did you mean '[a-z_0-9]+'\?)?"
    with pytest.raises(SegbenchError,
                       match=f"unknown {registry.kind} 'nope';{suggestion} available: {names[0]}"):
        registry.get("nope")
