"""The torch Dataset every data source ends in: cached uint8 arrays plus optional augmentation.

Items are uint8 tensors; the model scales and normalises on the device, which keeps host-to-device
transfers four times smaller than float32 and makes exported models take plain [0, 1] images.
"""

from __future__ import annotations

import itertools
import signal

import numpy as np
import torch
from torch.utils.data import Dataset


class SegmentationDataset(Dataset):
    def __init__(self, images: np.ndarray, masks: np.ndarray, ids: list[str], transform=None):
        assert len(images) == len(masks) == len(ids)
        self.images, self.masks, self.ids, self.transform = images, masks, ids, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key):
        # Training samplers hand (index, seed) pairs: each item's augmentation is then a function
        # of its seed alone, whatever the number of workers, so a resumed run repeats exactly.
        index, seed = key if isinstance(key, tuple) else (key, None)
        # A copy: the cached arrays are read-only memory maps.
        image = np.array(self.images[index])
        mask = np.array(self.masks[index])
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # CxHxW uint8
        mask = torch.from_numpy(np.ascontiguousarray(mask))[None]  # 1xHxW uint8
        return image, mask, index



class SeededShuffleSampler(torch.utils.data.Sampler):
    """Shuffles per epoch from a seed and pairs every index with a per-item augmentation seed.

    `set_seed(s)` before an epoch makes that epoch's order and augmentations a function of s.
    With `world_size` > 1 (distributed training) every rank draws the same permutation and
    item seeds and takes every world_size-th of them from `rank` on, so that step k's batches
    of all ranks together are one process's batch k of batch_size x world_size: the same
    images with the same augmentation. The remainder of length / world_size is dropped, never
    padded, so that no image counts twice in an epoch.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        if length < world_size:
            raise ValueError(f"{length} training images cannot be shared by {world_size} processes")
        self.length, self.rank, self.world_size = length, rank, world_size
        self.seed = 0

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return self.length // self.world_size

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(self.length)
        item_seeds = rng.integers(0, 2**31 - 1, self.length)
        used = len(self) * self.world_size
        pairs = zip(order[:used].tolist(), item_seeds[:used].tolist(), strict=True)
        return itertools.islice(pairs, self.rank, None, self.world_size)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: workers leave Ctrl-C and SIGTERM to the main process. A
    terminal, torchrun and SLURM signal every process of the group, workers included; a worker
    that died of the signal would make the main process fail with "DataLoader worker killed"
    instead of stopping at the next step (and saying how to resume). The main process ends its
    workers itself when it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class NativeMaskDataset(Dataset):
    """Test images at the model's resolution paired with their masks at the size on disk: the
    evaluation then resizes each probability map to its mask (eval.native_resolution), so that
    runs at different resolutions are scored on the same pixels. Batch size 1 (sizes differ)."""

    def __init__(self, images: np.ndarray, masks: list[np.ndarray], ids: list[str]):
        assert len(images) == len(masks) == len(ids)
        self.images, self.masks, self.ids = images, masks, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image = torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1)
        return image, torch.from_numpy(np.ascontiguousarray(self.masks[index]))[None], index
