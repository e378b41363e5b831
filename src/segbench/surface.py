"""Surface distances between binary masks: HD95 and ASSD per image, in parallel over images.

Definitions (those of MONAI's compute_hausdorff_distance(percentile=95) and
compute_average_surface_distance(symmetric=True); tests check against both MONAI and medpy):
- A mask's surface is its pixels that the 3x3 cross erosion removes (mask XOR eroded mask,
  outside the image counts as background), so a one-pixel mask is its own surface.
- d(A->B): for every surface pixel of A, the Euclidean distance to the nearest surface pixel of
  B, in pixels, or in mm when the pixel spacing is known.
- HD95 = max(95th percentile of d(P->G), 95th percentile of d(G->P)), linear interpolation.
- ASSD = mean of all the distances of d(P->G) and d(G->P) together (Heimann et al. 2009).
- Either mask empty: both are undefined (NaN), left out of means and counted.
medpy differs on purpose: its hd95 takes one percentile of both directions pooled, and its
assd averages the two directed means.

This module needs only numpy and scipy, so the worker processes start quickly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

HD95_RULE = "max of the two directed 95th percentiles of surface distances"
ASSD_RULE = "mean of the surface distances in both directions pooled"
# Below this many images the worker processes cost more than they save.
MIN_PARALLEL_IMAGES = 32


def surface(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask that a 3x3 cross erosion removes (background beyond the border)."""
    return mask & ~ndimage.binary_erosion(mask)


def _crop(pred: np.ndarray, truth: np.ndarray):
    """Both masks cut to their union's bounding box plus a one-pixel margin: the surfaces and the
    distances between them are the same, and the erosion touches far fewer pixels."""
    union = pred | truth
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, union.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, union.shape[1])
    return pred[r0:r1, c0:c1], truth[r0:r1, c0:c1]


def directed_distances(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None):
    """(d(P->G), d(G->P)) as float64 arrays, or None when either mask is empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    if not pred.any() or not truth.any():
        return None
    pred, truth = _crop(pred, truth)
    scale = np.ones(2) if spacing is None else np.asarray(spacing, np.float64)
    p = np.argwhere(surface(pred)) * scale
    g = np.argwhere(surface(truth)) * scale
    return cKDTree(g).query(p)[0], cKDTree(p).query(g)[0]


def hd95_assd(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None,
              percentile: float = 95.0) -> tuple[float, float]:
    d = directed_distances(pred, truth, spacing)
    if d is None:
        return math.nan, math.nan
    hd = max(float(np.percentile(d[0], percentile)), float(np.percentile(d[1], percentile)))
    return hd, float(np.concatenate(d).mean())


def _chunk(args) -> list[tuple[float, float]]:
    pairs, spacing = args
    return [hd95_assd(p, t, spacing) for p, t in pairs]


def resolve_workers(spec) -> int:
    if spec in (None, "auto"):
        return max(1, min(8, os.cpu_count() or 1))
    if int(spec) < 1:
        raise ValueError(f"surface metric workers must be >= 1 or auto, got {spec}")
    return int(spec)


def surface_metrics(preds, truths, spacing: Sequence[float] | None = None, workers=1,
                    min_parallel: int = MIN_PARALLEL_IMAGES) -> dict[str, np.ndarray]:
    """Per-image HD95 and ASSD of (N, H, W) predicted and true masks (anything > 0 is foreground).

    With workers > 1 and at least `min_parallel` images, the images are cut to their masks'
    bounding boxes and shared among worker processes (scipy's erosion and KD-tree build hold
    the GIL, so threads would not run in parallel).
    """
    n = len(preds)
    if len(truths) != n:
        raise ValueError(f"{n} predictions but {len(truths)} ground-truth masks")
    workers = resolve_workers(workers)
    started = time.perf_counter()
    pairs = []
    for p, t in zip(preds, truths, strict=True):
        p, t = np.asarray(p) > 0, np.asarray(t) > 0
        pairs.append(_crop(p, t) if p.any() and t.any() else (p[:0, :0], t[:0, :0]))
    if workers > 1 and n >= max(min_parallel, 2):
        import multiprocessing

        size = math.ceil(n / (workers * 4))  # a few chunks per worker: balances uneven images
        chunks = [(pairs[i:i + size], spacing) for i in range(0, n, size)]
        # spawn: a forked copy of a process holding torch's thread pools can deadlock.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            values = [v for part in pool.map(_chunk, chunks) for v in part]
    else:
        workers = 1
        values = _chunk((pairs, spacing))
    hd95 = np.array([v[0] for v in values], np.float64).reshape(n)
    assd = np.array([v[1] for v in values], np.float64).reshape(n)
    seconds = time.perf_counter() - started
    return {"hd95": hd95, "assd": assd, "seconds": seconds, "workers": workers}
