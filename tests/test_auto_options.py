"""`augmentation=auto` and `scheduler=auto` (train.yaml's defaults): a dataset config names the
options that suit it; anything chosen elsewhere wins; the run records the option that ran."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import TINY, run_cli
from datasets_util import compose_cfg
from segbench import SegbenchError, config_dir
from segbench.commands.auto_options import resolve_auto_options
from segbench.data.transforms import build_augmentation
from segbench.optim import build_scheduler

# TINY picks augmentation=none; these tests leave the choice to `auto`.
TINY_AUTO = [a for a in TINY if not a.startswith("augmentation=")]


def test_train_yaml_leaves_both_choices_to_the_dataset():
    text = (config_dir() / "train.yaml").read_text()
    assert "  - scheduler: auto" in text and "  - augmentation: auto" in text


def test_a_dataset_without_a_choice_gets_the_general_defaults():
    cfg = compose_cfg("dataset=synthetic")
    assert cfg.augmentation.name == "basic" and cfg.augmentation.transforms
    assert cfg.scheduler.name == "plateau" and cfg.scheduler.patience == 3


def test_the_dataset_names_its_options_and_a_choice_made_elsewhere_wins():
    named = ["+dataset.augmentation=hflip", "+dataset.scheduler=cosine"]
    cfg = compose_cfg(*named)
    assert cfg.augmentation.name == "hflip"
    assert [t["type"] for t in cfg.augmentation.transforms] == ["HorizontalFlip"]
    assert cfg.scheduler.name == "cosine" and cfg.scheduler.warmup_epochs == 1
    cfg = compose_cfg(*named, "augmentation=basic", "scheduler=none")  # the command line wins
    assert cfg.augmentation.name == "basic" and cfg.scheduler.name == "none"
    cfg = compose_cfg(*named, "experiment=quickstart")  # so does an experiment preset
    assert cfg.augmentation.name == "basic" and cfg.scheduler.name == "cosine"


def test_a_key_given_beside_auto_is_kept_over_the_options_own():
    cfg = compose_cfg("+dataset.scheduler=cosine", "+scheduler.min_lr=0.001")
    assert cfg.scheduler.name == "cosine" and cfg.scheduler.min_lr == 0.001


def test_a_dataset_naming_an_option_that_does_not_exist_is_one_line():
    with pytest.raises(SegbenchError, match=r"dataset synthetic names augmentation=flips, which "
                                            r"is not an option of configs/augmentation/ \(.*hflip"):
        compose_cfg("+dataset.augmentation=flips")
    with pytest.raises(SegbenchError, match="dataset.scheduler=auto"):
        compose_cfg("+dataset.scheduler=auto")


def test_an_unresolved_auto_is_refused_where_it_would_be_built():
    """A config composed by hand, without the train command's resolution, does not silently
    train without augmentation or schedule."""
    cfg = OmegaConf.create({"augmentation": {"name": "auto"}, "scheduler": {"name": "auto"}})
    with pytest.raises(SegbenchError, match="augmentation=auto .*resolve_auto_options"):
        build_augmentation(cfg.augmentation, (64, 64))
    import torch
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(SegbenchError, match="scheduler=auto .*resolve_auto_options"):
        build_scheduler(cfg.scheduler, optimizer, max_epochs=2, steps_per_epoch=1)
    assert resolve_auto_options(cfg) == {"augmentation": "basic", "scheduler": "plateau"}


def test_lgg_names_its_options_and_says_why():
    """The LGG defaults come from the measurements in docs/results.md; its config says so."""
    text = (config_dir() / "dataset" / "lgg_mri.yaml").read_text()
    named = yaml.safe_load(text)
    cfg = compose_cfg("dataset=lgg_mri")
    for group in ("augmentation", "scheduler"):
        assert cfg[group].name == named.get(group, {"augmentation": "basic",
                                                    "scheduler": "plateau"}[group])
    assert "docs/results.md" in text


def test_a_run_records_the_option_that_ran_and_resumes_with_it(tmp_path):
    args = [*TINY_AUTO, "trainer.max_epochs=1", "+dataset.augmentation=hflip",
            "eval.num_predictions=0"]
    proc = run_cli("train", *args, "hydra.run.dir=run", cwd=tmp_path)
    assert "augmentation=hflip: dataset synthetic's own choice" in proc.stderr + proc.stdout
    run = tmp_path / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["augmentation"]["name"] == "hflip" and config["scheduler"]["name"] == "plateau"
    choices = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"][
        "choices"]
    assert choices["augmentation"] == "hflip" and choices["scheduler"] == "plateau"
    # The same command again: the same resolved config, so the finished run is recognised.
    again = run_cli("train", *args, "hydra.run.dir=run", "trainer.resume=true", cwd=tmp_path)
    assert "already finished" in again.stderr + again.stdout


def test_an_option_from_the_users_own_config_folder(tmp_path):
    """The dataset may name an option that lives on the user's hydra.searchpath."""
    user = tmp_path / "my_configs" / "augmentation"
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text("name: mine\ntransforms:\n  - {type: VerticalFlip, p: 0.5}\n")
    proc = run_cli("train", *TINY_AUTO, "trainer.max_epochs=1", "eval.num_predictions=0",
                   f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]",
                   "+dataset.augmentation=mine", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["augmentation"] == {"name": "mine",
                                      "transforms": [{"type": "VerticalFlip", "p": 0.5}]}
