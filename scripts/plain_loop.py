"""A plain training loop to compare segbench with: the 40-line notebook a researcher would write.

    python scripts/plain_loop.py <segbench run dir> [--epochs 10] [--seed 0] [--out plain.json]

It trains on the training split that a segbench run recorded (its split.json, so both see the same
patients; --with-val adds the run's validation images, which a notebook without validation would
train on) and tests the last epoch on the run's test split. Nothing of segbench's data path or
loop is used: PIL reads and resizes (bilinear images, nearest masks), ImageNet normalisation,
smp's U-Net with the run's encoder, BCE + smp's DiceLoss (smooth 0), Adam, a shuffled DataLoader,
no augmentation, no validation, no schedule, no checkpoint selection. Its metrics follow
docs/metrics.md (per-slice Dice with empty/empty = 1; a volume's Dice pools its slices), so the
JSON it prints sits beside segbench's metrics.json: `test.dice`, `test.volume_dice_mean`,
`test.volume_dice_median` and the patients with a volume Dice below 0.05.

The comparison and its results: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import tifffile
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from segbench.data import dataset_module

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read(path: Path, size: int, mask: bool) -> np.ndarray:
    try:
        img = Image.open(path)
        img.load()
    except OSError:  # a TIFF codec PIL lacks: tifffile reads it
        img = Image.fromarray(tifffile.imread(path))
    if mask:
        return np.asarray(img.convert("L").resize((size, size), Image.NEAREST)) > 0
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def tensors(samples, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([read(s.image, size, False) for s in samples]).astype(np.float32) / 255.0
    images = (images - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    masks = np.stack([read(s.mask, size, True) for s in samples]).astype(np.float32)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(masks)[:, None])


def samples_of(run_dir: Path, names: list[str]):
    cfg = OmegaConf.load(run_dir / "config.yaml")
    recorded = json.loads((run_dir / "split.json").read_text())["splits"]
    pools = dataset_module(cfg.dataset).list_splits(cfg.dataset)
    by_id = {s.id: s for pool in pools.values() for s in pool}
    return cfg, {n: [by_id[i] for i in recorded[n]] for n in names}


def counts(logits: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    pred = logits.sigmoid() >= 0.5
    gt = masks > 0.5
    tp = (pred & gt).sum((1, 2, 3))
    fp = (pred & ~gt).sum((1, 2, 3))
    fn = (~pred & gt).sum((1, 2, 3))
    return torch.stack([tp, fp, fn], 1).numpy()


def dice(tp, fp, fn) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a segbench run directory (its split and settings)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--size", type=int, default=None, help="default: the run's image size")
    p.add_argument("--encoder", default=None, help="default: the run's model.encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-val", action="store_true",
                   help="train on the run's validation images too")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here as well")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    cfg, splits = samples_of(args.run_dir, ["train", "val", "test"])
    size = args.size or int(cfg.resolution.height)
    encoder = args.encoder or cfg.model.get("encoder", "resnet34")
    train = splits["train"] + (splits["val"] if args.with_val else [])
    x, y = tensors(train, size)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    model = smp.Unet(encoder, encoder_weights=None, in_channels=3, classes=1)
    bce, dice_loss = torch.nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary", from_logits=True)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for xb, yb in loader:
            opt.zero_grad()
            out = model(xb)
            loss = 0.5 * bce(out, yb) + 0.5 * dice_loss(out, yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        print(f"epoch {epoch + 1}/{args.epochs} train_loss {total / len(x):.4f}", file=sys.stderr)

    model.eval()
    test = splits["test"]
    tx, ty = tensors(test, size)
    with torch.no_grad():
        c = np.concatenate([counts(model(tx[i:i + 32]), ty[i:i + 32])
                            for i in range(0, len(tx), 32)])
    per_slice = [dice(*row) for row in c]
    volumes: dict[str, np.ndarray] = {}
    for s, row in zip(test, c, strict=True):
        key = s.group or s.id
        volumes[key] = volumes.get(key, 0) + row
    per_volume = {k: dice(*v) for k, v in volumes.items()}
    result = {"protocol": {"run_dir": str(args.run_dir), "epochs": args.epochs, "size": size,
                           "encoder": encoder, "batch_size": args.batch_size, "lr": args.lr,
                           "seed": args.seed, "train_images": len(train),
                           "with_val": args.with_val, "seconds": round(time.time() - start, 1)},
              "test": {"dice": float(np.mean(per_slice)),
                       "volume_dice_mean": float(np.mean(list(per_volume.values()))),
                       "volume_dice_median": float(statistics.median(per_volume.values())),
                       "volumes_below_0.05": sorted(k for k, v in per_volume.items() if v < 0.05),
                       "per_volume": per_volume}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
