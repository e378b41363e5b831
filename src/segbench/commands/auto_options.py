"""`augmentation=auto` and `scheduler=auto` (train.yaml's defaults): the dataset's own option.

A dataset config may name the option of these groups that suits it, from measured figures
(configs/dataset/lgg_mri.yaml: `augmentation: none`, see docs/results.md). `auto` takes the
dataset's choice, or the general default (FALLBACK) where it names none. A choice made anywhere
else wins: the command line, an experiment preset, a sweep or a search.

Hydra cannot do this alone: a dataset config's defaults list cannot override a group listed
after it, nor one that the other commands' configs (verify, eval, download) do not have, and a
defaults entry chosen by interpolation may not override at all. So the train command resolves
`auto` before its settings are checked: the option's config replaces the `auto` node, and the
choice Hydra records (.hydra/hydra.yaml, which the report reads) becomes that option. config.yaml
therefore always holds the option that ran, and a resume compares like with like.
"""

from __future__ import annotations

import logging
from typing import cast

from segbench import SegbenchError

AUTO = "auto"
# The option `auto` stands for when the dataset names none.
FALLBACK = {"augmentation": "basic", "scheduler": "plateau"}

log = logging.getLogger("segbench.train")


def resolve_auto_options(cfg, hydra_cfg=None) -> dict[str, str]:
    """Replace each group of FALLBACK whose option is `auto` by the dataset's option (or the
    fallback), in place; returns {group: option} for those resolved. Keys given beside `auto`
    (`+scheduler.min_lr=0`) are kept over the option's own."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    dataset = cfg.get("dataset")
    resolved: dict[str, str] = {}
    given: dict[str, dict] = {}
    for group, fallback in FALLBACK.items():
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or node.get("name") != AUTO:
            continue
        named = dataset.get(group) if isinstance(dataset, DictConfig) else None
        option = str(named) if named is not None else fallback
        if option == AUTO:
            raise SegbenchError(f"dataset.{group}=auto: a dataset config names an option of "
                                f"configs/{group}/ (e.g. {fallback}), not auto")
        resolved[group] = option
        given[group] = cast(dict, OmegaConf.to_container(node, resolve=False))
    if not resolved:
        return resolved
    loaded = _load_options(resolved, cfg, hydra_cfg)  # one composition for all of them
    with open_dict(cfg):
        for group, node in loaded.items():
            extra = {k: v for k, v in given[group].items() if k != "name"}
            cfg[group] = OmegaConf.merge(node, extra) if extra else node
    _record_choices(hydra_cfg, resolved)
    _log(resolved, cfg, dataset)
    return resolved


def _load_options(options: dict[str, str], cfg, hydra_cfg) -> dict:
    """{group: configs/<group>/<option>.yaml as Hydra composes it}, from the same search path as
    the run (a user's hydra.searchpath directories included)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    if not GlobalHydra.instance().is_initialized():  # outside a Hydra app: segbench's own tree
        return {group: _load_file(group, option, cfg) for group, option in options.items()}
    searchpath = []
    if hydra_cfg is not None:
        searchpath = [o for o in hydra_cfg.overrides.hydra if o.startswith("hydra.searchpath=")]
    try:
        composed = compose(config_name=None, overrides=[
            *(f"+{group}={option}" for group, option in options.items()), *searchpath])
    except HydraException as err:
        raise _first_unknown(options, cfg) from err
    loaded = {}
    for group, option in options.items():
        node = composed.get(group)
        if node is None:
            raise _unknown(group, option, cfg)
        loaded[group] = OmegaConf.create(OmegaConf.to_container(node, resolve=False))
    return loaded


def _first_unknown(options: dict[str, str], cfg) -> SegbenchError:
    """The error for the first option that names no file of segbench's tree (or the first one)."""
    from segbench import config_dir

    for group, option in options.items():
        if not (config_dir() / group / f"{option}.yaml").is_file():
            return _unknown(group, option, cfg)
    group, option = next(iter(options.items()))
    return _unknown(group, option, cfg)


def _load_file(group: str, option: str, cfg):
    from omegaconf import OmegaConf

    from segbench import config_dir

    path = config_dir() / group / f"{option}.yaml"
    if not path.is_file():
        raise _unknown(group, option, cfg)
    node = OmegaConf.load(path)
    with_defaults = OmegaConf.to_container(node, resolve=False)
    assert isinstance(with_defaults, dict)
    with_defaults.pop("defaults", None)
    return OmegaConf.create(with_defaults)


def _unknown(group: str, option: str, cfg) -> SegbenchError:
    from segbench import config_dir

    options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if p.stem != AUTO)
    name = cfg.get("dataset", {}).get("name", "?")
    return SegbenchError(f"dataset {name} names {group}={option}, which is not an option of "
                         f"configs/{group}/ ({', '.join(options)}); correct the dataset config's "
                         f"`{group}` key, or pick one on the command line: {group}=<option>")


def _record_choices(hydra_cfg, resolved: dict[str, str]) -> None:
    """The option that ran as Hydra's recorded choice (.hydra/hydra.yaml; the report's axes)."""
    if hydra_cfg is None:
        return
    from omegaconf import open_dict, read_write

    choices = hydra_cfg.runtime.choices
    with read_write(choices), open_dict(choices):
        for group, option in resolved.items():
            choices[group] = option


def _log(resolved: dict[str, str], cfg, dataset) -> None:
    from omegaconf import DictConfig

    named = {g: o for g, o in resolved.items()
             if isinstance(dataset, DictConfig) and dataset.get(g) is not None}
    if not named:
        return  # the general defaults: nothing to explain
    name = dataset.get("name", "?") if isinstance(dataset, DictConfig) else "?"
    log.info("%s: dataset %s's own choice (its config says why); pick another on the command "
             "line, e.g. %s", " ".join(f"{g}={o}" for g, o in named.items()), name,
             " ".join(f"{g}={FALLBACK[g]}" for g in named))
