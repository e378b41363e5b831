"""`segbench explain run_dir=<dir> cases=[id,...]`: Grad-CAM and mean activation at the end of the
encoder and of the decoder for a few test cases of a run (explain.png; see
segbench.inspection.gradcam)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from segbench import SegbenchError
from segbench.cli_args import path_arguments
from segbench.runs import rundir

# torch, NumPy, Hydra, OmegaConf and the segbench modules that import them load inside the
# functions that use them, so that `segbench --help` and argument errors answer at once (NumPy
# alone adds about 0.1-0.4 s to `segbench --help` here).

CONFIG = "explain"
HELP = ("what a run's network looks at: explain run_dir=<dir> [cases=[id,...]] "
        "(Grad-CAM, activations)")

prepare = path_arguments("run_dir", must_exist=("run_dir",))

log = logging.getLogger("segbench.inspection.gradcam")


def default_cases(run) -> list[str]:
    """The run's worst, median and best test cases by Dice (cases.npz), else its first three."""
    from segbench.inference.cases import load_cases, pick

    cases = load_cases(run.path / rundir.CASES)
    if cases is None:
        return run.read_split()["splits"]["test"][:3]
    chosen = pick(cases.dice, None, 0)
    return [cases.ids[chosen[r]] for r in ("worst Dice", "median Dice", "best Dice")]


def run(cfg) -> dict:
    import numpy as np
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from segbench.data import build_datasets
    from segbench.data.pinning import recorded_splits
    from segbench.inspection.gradcam import draw, explain, find_layers
    from segbench.models import load_trained
    from segbench.runtime.device import resolve_device

    run_dir = rundir.RunDir.open(cfg.run_dir, needs=(rundir.CONFIG, rundir.SPLIT))
    run_dir.checkpoint_path(cfg.checkpoint)
    train_cfg = run_dir.read_config()
    if cfg.data_root:
        train_cfg.dataset.root = str(Path(cfg.data_root).expanduser())
    wanted = ([str(c) for c in cfg.cases] if OmegaConf.is_list(cfg.cases) else
              [str(cfg.cases)] if cfg.cases is not None else default_cases(run_dir))
    if not wanted or len(wanted) > 12:
        raise SegbenchError(f"cases={wanted}; name 1 to 12 test cases, "
                            f"e.g. cases=[{','.join(wanted[:2])}]")
    test = run_dir.read_split()["splits"]["test"]
    missing = [c for c in wanted if c not in test]
    if missing:
        raise SegbenchError(f"{', '.join(missing)} not in the run's test split; its cases are e.g. "
                            f"{', '.join(test[:4])} (split.json, per_case.csv)")
    splits = recorded_splits(train_cfg, run_dir.read_split(), ["test"], where=f"run {run_dir.path}",
                             fix="point data_root=<dir> at the data it was trained on", quiet=True)
    splits["test"] = [s for s in splits["test"] if s.id in wanted]
    data = build_datasets(train_cfg, splits, Path(train_cfg.paths.cache), augment=False)["test"]
    device = resolve_device(cfg.device)
    model, state, _ = load_trained(run_dir, cfg.checkpoint, device, train_cfg)
    threshold = float(train_cfg.eval.threshold)
    order = {c: i for i, c in enumerate(wanted)}
    rows: list[tuple] = []
    layers: dict[str, str] | None = None
    for k in sorted(range(len(data.ids)), key=lambda k: order[data.ids[k]]):
        image = np.asarray(data.images[k])
        batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].to(device)
        layers = layers or find_layers(model, batch)
        maps = explain(model, batch, threshold, layers)
        rows.append((data.ids[k], image, np.asarray(data.masks[k]), maps))
    out = Path(HydraConfig.get().runtime.output_dir) / "explain.png"
    name = "/".join(run_dir.path.resolve().parts[-2:])
    draw(rows, out, f"{name}: what the network looks at ({cfg.checkpoint}.pt, "
                    f"epoch {state.get('epoch')}); Grad-CAM of the foreground logits over the "
                    "predicted mask")
    assert layers is not None  # the wanted cases are in the test split: one row each at least
    log.info("encoder end: %s, decoder end: %s", layers["encoder end"], layers["decoder end"])
    log.info("wrote %s (%d cases)", os.path.relpath(out), len(rows))
    return {"figure": str(out), "cases": [r[0] for r in rows], "layers": layers}
