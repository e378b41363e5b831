"""The training split resident on the training device: batches drawn there by index.

The decode-once cache (data/cache.py) holds the split as uint8 arrays at the training resolution;
small enough for a GPU (LGG at 256 px is 0.8 GB), they are copied there once as one tensor. Each
batch is then an index_select on the device plus the preset's augmentation as tensor operations
(data/tensor_augment.py): the CPU no longer decodes, augments, collates and copies every step.

`ResidentBatches` has the DataLoader's interface as the trainer uses it (iterable of (images,
masks, indices) batches, len, a `sampler` whose seed is set per epoch), so the trainer changes only
where it makes the loader. It iterates the same `SeededShuffleSampler` as the loader path: the
same order, the same item seeds, the same batches, so a resumed run repeats exactly. The images
drawn are not the loader path's pixel for pixel (tensor operations are not albumentations' cv2
calls; flips and rot90 are), so the two paths are two seeds' worth apart, not bit-identical.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch

from segbench import SegbenchError
from segbench.data.dataset import SeededShuffleSampler, SegmentationDataset
from segbench.data.tensor_augment import DeviceAugmentation, Unsupported

log = logging.getLogger(__name__)

# `auto` on CPU: off. docs/benchmarks.md measured the device path as fast as the loader path on
# 2 cores (the step, not the data, sets the pace there), so CPU runs keep the loader path's
# augmentation draws and the numbers of runs made before the device path existed.
CPU_AUTO = False


class ResidentBatches:
    def __init__(self, dataset: SegmentationDataset, sampler: SeededShuffleSampler, batch_size: int,
                 drop_last: bool, device: torch.device, augmentation: DeviceAugmentation | None):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.device, self.augmentation = device, augmentation
        # Copies: the cache's arrays are read-only memory maps. NxCxHxW and Nx1xHxW uint8.
        images = torch.from_numpy(np.array(dataset.images)).permute(0, 3, 1, 2)
        self.images = images.contiguous().to(device)
        self.masks = torch.from_numpy(np.array(dataset.masks))[:, None].to(device)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        pairs = list(self.sampler)
        order = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        on_device = order.to(self.device)  # one copy per epoch, sliced per batch
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = start + self.batch_size
            rows = on_device[start:stop]
            images, masks = self.images.index_select(0, rows), self.masks.index_select(0, rows)
            if self.augmentation is not None:
                images, masks = self.augmentation(images, masks, [s for _, s in pairs[start:stop]])
            yield images, masks, order[start:stop]


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device` (the machine's RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_batches(dataset: SegmentationDataset, sampler: SeededShuffleSampler, batch_size: int,
                     drop_last: bool, device: torch.device, setting, budget: float):
    """ResidentBatches where `trainer.data_on_device` asks for them and they can be had, else None
    (the caller makes a DataLoader). `budget`: the fraction of the device's memory the split may
    take. auto: on CUDA when the split fits, on CPU per CPU_AUTO; never on other devices."""
    if setting is False or (setting == "auto" and not (
            device.type == "cuda" or (device.type == "cpu" and CPU_AUTO))):
        return None
    try:
        augmentation = DeviceAugmentation.build(dataset.transform)
    except Unsupported as err:
        log.info("data on device: the augmentation's %s has no tensor form; this run's training "
                 "batches come from the data loader", err)
        return None
    need = dataset.images.nbytes + dataset.masks.nbytes
    allowed = device_memory(device) * budget
    if need > allowed:
        message = (f"the training split takes {_size(need)}, more than "
                   f"trainer.data_on_device_budget={budget} of {device}'s memory "
                   f"({_size(allowed)})")
        if setting is True:
            raise SegbenchError(f"trainer.data_on_device=true: {message}; raise the budget, use a "
                                "lower resolution, or set trainer.data_on_device=auto")
        log.info("data on device: %s; this run's training batches come from the data loader",
                 message)
        return None
    log.info("data on device: the training split (%.1f MiB) is on %s; batches and augmentation "
             "are drawn there", need / 2**20, device)
    return ResidentBatches(dataset, sampler, batch_size, drop_last, device, augmentation)
