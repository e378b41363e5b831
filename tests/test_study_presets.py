"""Every study preset composes, and so does every value of every axis it sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import ROOT, run_cli

CONFIGS = ROOT / "configs"
STUDIES = sorted(p.stem for p in (CONFIGS / "experiment" / "study").glob("*.yaml"))
def _axes(params: dict) -> list[tuple[str, list[str]]]:
    parser = OverridesParser.create()
    out = []
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        out.append((override.get_key_element(), list(override.sweep_string_iterator())))
    return out


def test_there_are_the_eight_studies():
    assert STUDIES == sorted(["models_augmentation", "activations", "optimizers", "resolution",
                              "augmentation", "data_size", "losses", "mcnet_versions"])


@pytest.mark.parametrize("study", STUDIES)
def test_study_composes_on_every_axis_value(study):
    text = (CONFIGS / "experiment" / "study" / f"{study}.yaml").read_text()
    assert (text.startswith("# @package _global_\n# Study: ")
            and "?" in text.split("defaults:")[0]), \
        "the header says which question the study answers"
    base = [f"experiment=study/{study}"]
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=base, return_hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        assert params, f"{study} sweeps nothing"
        assert cfg.trainer.max_epochs >= 50 and cfg.trainer.early_stopping.patience >= 10
        for key, values in _axes(params):
            assert len(values) >= 2
            for value in values:
                job = compose("train", overrides=[*base, f"{key}={value}"])
                assert job.model.name and job.dataset.name


def test_studies_sweep_what_the_issue_lists():
    expected = {
        "models_augmentation": {"model": ["unet", "unetpp", "fpn"],
                                "augmentation": ["none", "basic"]},
        "activations": {"activation": ["relu", "leakyrelu", "gelu", "sigmoid", "tanh"]},
        "optimizers": {"optimizer": ["radam", "adam", "rmsprop", "sgd"]},
        "resolution": {"resolution": ["'64'", "'128'", "'256'", "'512'"]},
        "augmentation": {"augmentation": ["none", "hflip", "brightness_contrast", "gaussian_blur"]},
        "data_size": {"dataset.train_fraction": ["0.1", "0.25", "0.5", "1.0"]},
        "losses": {"model": ["unet", "unetpp"],
                   "loss": ["dice", "bce", "log_cosh_dice", "shape_aware"],
                   "optimizer": ["adam", "sgd"]},
        "mcnet_versions": {"mcnet_version": ["v1", "v2", "v3", "v4", "v5"]},
    }
    fixed = {  # (config path, value) every job of the study has
        "models_augmentation": [("dataset.name", "kvasir_instrument"), ("resolution.height", 576),
                                ("resolution.width", 720), ("activation.name", "relu"),
                                ("optimizer.name", "adam")],
        "activations": [("model.name", "unet")],
        "optimizers": [("model.name", "unet")],
        "resolution": [("model.name", "deeplabv3plus"), ("model.encoder", "resnet50")],
        "augmentation": [("model.name", "deeplabv3plus"), ("model.encoder", "resnet50")],
        "losses": [("dataset.name", "lgg_mri")],
        "mcnet_versions": [("dataset.name", "lung_ct"), ("model.name", "mcnet")],
    }
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        for study, axes in expected.items():
            cfg = compose("train", overrides=[f"experiment=study/{study}"],
                          return_hydra_config=True)
            assert dict(_axes(OmegaConf.to_container(cfg.hydra.sweeper.params))) == axes, study
            for path, value in fixed.get(study, []):
                assert OmegaConf.select(cfg, path) == value, (study, path)
        # MCNet v2 is v1 plus augmentation.
        v1, v2 = (compose("train",
                          overrides=["experiment=study/mcnet_versions", f"mcnet_version={v}"])
                  for v in ("v1", "v2"))
        assert v1.model.preset == v2.model.preset == "v1"
        assert v1.augmentation.name == "none" and v2.augmentation.name == "basic"


def test_cfg_job_prints_a_study_from_the_command_line(tmp_path):
    proc = run_cli("train", "experiment=study/optimizers", "--cfg", "job", cwd=tmp_path)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["name"] == "unet" and cfg["dataset"]["name"] == "kvasir_instrument"
    # composing writes nothing
    assert Path(tmp_path).is_dir() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("launcher,target", [
    ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("ray_cluster", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"),
])
def test_launcher_configs_compose(launcher, target):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "parallel":  # the dev extra installs joblib's plugin: its class must load
        from hydra.utils import get_class

        get_class(target)
        assert cfg.hydra.launcher.n_jobs == 2
