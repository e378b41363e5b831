"""Format-faithful stand-ins for the three public datasets, written from code in seconds.

Each writer lays out a small dataset exactly as the real one is on disk (folder and file names,
file formats, dtypes, value ranges, split files) with synthetic, deterministic pixels, and
returns a `StandIn` recording how it was built (ids, sizes, which masks hold foreground,
patients, split lists), so that a check can compare what a loader reads with what was written.
The test suite runs on them (it must pass without the real data), and scripts use them where
the real data is absent. The pixels are phantoms, not medical images: never train a model for
use or tune anything on them.

- `write_lung_ct`: Kaggle "Finding and Measuring Lungs in CT Data": 2d_images/ID_XXXX_Z_YYYY.tif
  int16 Hounsfield units (air about -1000, padding outside the scan circle down to about -2600
  in some slices, bone and a calcification up to a few thousand), 2d_masks/ same names, uint8
  {0, 255}, and lung_stats.csv.
- `write_lgg_mri`: LGG brain MRI (kaggle_3m): <patient folder>/<folder>_<N>.tif HxWx3 uint8
  (pre-contrast, FLAIR, post-contrast) and <folder>_<N>_mask.tif uint8 {0, 255}, N = 1..count
  with no gaps, tumour in a run of middle slices only (most masks empty), and data.csv.
- `write_kvasir_instrument`: Kvasir-Instrument: images/<id>.jpg frames, masks/<id>.png RGB with
  three identical channels {0, 255} at the dataset's varied frame sizes, train.txt/test.txt.
- `write_frames_for_masks`: a JPEG frame of each mask's size (for mask-only copies).
"""

from __future__ import annotations

import csv
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile


@dataclass(frozen=True)
class StandIn:
    """What a writer wrote under `root` (the folder to pass as dataset.root)."""

    root: Path
    ids: tuple[str, ...]                  # every image/mask pair's id, sorted
    sizes: dict[str, tuple[int, int]]     # id -> (width, height)
    foreground: frozenset[str]            # ids whose mask is not empty
    patients: dict[str, tuple[str, ...]] = field(default_factory=dict)  # LGG: patient -> ids, 1..N
    split_files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # Kvasir: as listed


def _ellipse(shape: tuple[int, int], cx: float, cy: float, ax: float, ay: float,
             angle: float = 0.0) -> np.ndarray:
    """Boolean mask of an ellipse (centre, semi-axes in pixels, rotation in radians)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    x, y = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def _smooth(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse grid upsampled with cubic interpolation."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


# --- Lung CT -------------------------------------------------------------------------------------

def _ct_slice(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(int16 HU slice, uint8 {0, 255} lung mask): a chest phantom inside the scan circle."""
    shape = (size, size)
    s = float(size)
    hu: np.ndarray = np.full(shape, -1000.0, np.float32)  # air around the patient
    body_a, body_b = s * rng.uniform(0.38, 0.44), s * rng.uniform(0.28, 0.33)
    cy = s * rng.uniform(0.5, 0.54)
    body = _ellipse(shape, s / 2, cy, body_a, body_b)
    inner = _ellipse(shape, s / 2, cy, body_a - s * 0.03, body_b - s * 0.03)
    hu[body] = -100.0                                             # subcutaneous fat
    hu[inner] = 40.0 + 25.0 * _smooth(rng, shape, 8)[inner]       # muscle and organs
    lungs = np.zeros(shape, bool)
    scale = rng.uniform(0.75, 1.1)                                # lungs grow and shrink along z
    for side in (-1, 1):
        lungs |= _ellipse(shape, s / 2 + side * s * 0.17, cy - s * 0.02, s * 0.13 * scale,
                          s * 0.2 * scale, side * rng.uniform(0.05, 0.2))
    lungs &= inner
    yy = np.mgrid[:size, :size][0].astype(np.float32) / s
    parenchyma = -860.0 + 180.0 * np.clip(yy - (cy / s - 0.2), 0, 0.4)  # denser toward the back
    parenchyma += 35.0 * _smooth(rng, shape, 24) + rng.normal(0, 25.0, shape)
    hu[lungs] = parenchyma[lungs]
    vessels = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(25, 45))):                    # vessels: bright dots in the lung
        cx, cyv = rng.uniform(0.15, 0.85) * s, rng.uniform(0.25, 0.75) * s
        cv2.circle(vessels, (int(cx), int(cyv)), max(1, int(s * rng.uniform(0.003, 0.01))),
                   float(rng.uniform(500, 850)), -1)
    hu[lungs] += vessels[lungs]
    bone = np.zeros(shape, np.float32)                            # spine and ribs
    cv2.circle(bone, (int(s / 2), int(cy + body_b * 0.75)), int(s * 0.04), 900.0, -1)
    for angle in np.linspace(0.25, np.pi - 0.25, 8):
        for side in (-1, 1):
            x = s / 2 + side * np.cos(angle) * (body_a - s * 0.045)
            y = cy + np.sin(angle) * (body_b - s * 0.045)
            if rng.random() < 0.7:
                cv2.circle(bone, (int(x), int(y)), max(1, int(s * 0.01)), 650.0, -1)
    hu = np.where(bone > 0, bone + 80.0 * _smooth(rng, shape, 16), hu)
    spot = (int(s / 2 + rng.uniform(-0.05, 0.05) * s), int(cy + rng.uniform(-0.05, 0.05) * s))
    cv2.circle(hu, spot, max(1, int(s * 0.004)), float(rng.uniform(1500, 3000)), -1)
    hu = cv2.GaussianBlur(hu, (0, 0), max(0.6, s / 512))  # partial volume at the edges
    # OpenCV's stubs type its result as an integer or float array; a blurred float image is float
    hu += rng.normal(0, 8.0, shape)  # type: ignore[arg-type]
    circle = _ellipse(shape, s / 2, s / 2, s * 0.5, s * 0.5)
    if rng.random() < 0.5:                                        # padding outside the scan circle
        hu[~circle] = float(rng.integers(-2620, -1500))
    mask = np.where(lungs, 255, 0).astype(np.uint8)
    return np.clip(np.round(hu), -32768, 32767).astype(np.int16), mask


def lung_ct_names(n: int, seed: int = 0) -> list[str]:
    """n slice names ID_XXXX_Z_YYYY (sorted), like the Kaggle set's (ids 11 apart)."""
    rng = np.random.default_rng(seed)
    return [f"ID_{i * 11:04d}_Z_{int(z):04d}" for i, z in enumerate(rng.integers(60, 280, n))]


def write_lung_ct(root: Path, n: int = 24, size: int = 512, seed: int = 0,
                  pixel_mm: float = 0.84) -> StandIn:
    """Kaggle "Finding and Measuring Lungs in CT Data" layout under root: n slices of
    size x size int16 HU in 2d_images/, their uint8 {0, 255} lung masks in 2d_masks/, and
    lung_stats.csv (the dataset's per-slice measurements, computed from the phantom)."""
    root = Path(root)
    (root / "2d_images").mkdir(parents=True, exist_ok=True)
    (root / "2d_masks").mkdir(exist_ok=True)
    names = lung_ct_names(n, seed)
    rows = []
    for k, name in enumerate(names):
        hu, mask = _ct_slice(np.random.default_rng([seed, k]), size)
        tifffile.imwrite(root / "2d_images" / f"{name}.tif", hu, photometric="minisblack")
        tifffile.imwrite(root / "2d_masks" / f"{name}.tif", mask, photometric="minisblack")
        lung = hu[mask > 0].astype(np.float64)
        rows.append([f"{name}.tif", int(lung.size), lung.size * pixel_mm**2, lung.size / hu.size,
                     lung.mean(), np.percentile(lung, 95), np.percentile(lung, 5)])
    with open(root / "lung_stats.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_id", "lung_area_px", "lung_area_mm2", "lung_volume_fraction",
                         "lung_mean_hu", "lung_pd95_hu", "lung_pd05_hu"])
        writer.writerows(rows)
    return StandIn(root, tuple(names), {i: (size, size) for i in names}, frozenset(names))


# --- LGG brain MRI -------------------------------------------------------------------------------

# Patient folders (invented ids, one per contributing institution as in the shared sample) and
# their slice counts: every count >= 10 (so N=10 follows N=9), one >= 11 beyond that.
LGG_PATIENTS = {"TCGA_CS_0001_19960909": 10, "TCGA_DU_0002_19950405": 13,
                "TCGA_FG_0003_20000626": 16, "TCGA_HT_0004_19970826": 11}
LGG_CSV_HEADER = ["Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster",
                  "RPPACluster", "OncosignCluster", "COCCluster", "histological_type",
                  "neoplasm_histologic_grade", "tumor_tissue_site", "laterality",
                  "tumor_location", "gender", "age_at_initial_pathologic", "race", "ethnicity",
                  "death01"]


def lgg_tumour_slices(count: int) -> range:
    """The slice numbers (1-based) that hold tumour in a stack of `count`: a run in the middle,
    about 40% of the stack, so that most slices have an empty mask."""
    first = int(round(count * 0.35)) + 1
    return range(first, first + max(1, int(round(count * 0.4))))


def _mri_slice(rng, size: int, z: float, tumour: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 pre/FLAIR/post, uint8 {0, 255} mask) of an axial head slice at height z in
    (0, 1) through the stack."""
    shape = (size, size)
    s = float(size)
    extent = np.sqrt(max(0.05, 1 - (2 * z - 1) ** 2))             # smaller near the top and base
    head = _ellipse(shape, s / 2, s / 2, s * 0.36 * extent, s * 0.43 * extent)
    brain = _ellipse(shape, s / 2, s / 2, s * 0.32 * extent, s * 0.39 * extent)
    texture = _smooth(rng, shape, 20)
    image = np.zeros((*shape, 3), np.float32)
    for c, (scalp, tissue) in enumerate(((150, 85), (60, 95), (140, 90))):
        image[..., c][head] = scalp
        image[..., c][brain] = tissue + 15 * texture[brain]
    mask = np.zeros(shape, np.uint8)
    if tumour is not None:
        cx, cy, ax, ay = tumour
        lesion = _ellipse(shape, cx * s, cy * s, ax * s, ay * s) & brain
        mask[lesion] = 255
        image[..., 1][lesion] = 185 + 20 * texture[lesion]        # FLAIR hyperintense
        image[..., 2][lesion] += 25
    image = cv2.GaussianBlur(image, (0, 0), 1.0) + rng.normal(0, 3, (*shape, 3))
    image[~head] = 0
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def write_lgg_mri(root: Path, patients: Mapping[str, int] | None = None, size: int = 256,
                  seed: int = 0) -> StandIn:
    """kaggle_3m under root: one folder per patient (name -> slice count, LGG_PATIENTS by
    default), slices <folder>_<N>.tif (size x size x 3 uint8) with <folder>_<N>_mask.tif
    (uint8 {0, 255}) for N = 1..count, tumour in lgg_tumour_slices(count), and data.csv."""
    patients = dict(LGG_PATIENTS if patients is None else patients)
    base = Path(root) / "kaggle_3m"
    base.mkdir(parents=True, exist_ok=True)
    ids, foreground, by_patient = [], set(), {}
    for p, (folder, count) in enumerate(sorted(patients.items())):
        (base / folder).mkdir(exist_ok=True)
        rng = np.random.default_rng([seed, p])
        tumour_at = lgg_tumour_slices(count)
        lesion = (rng.uniform(0.38, 0.62), rng.uniform(0.35, 0.6), rng.uniform(0.05, 0.1),
                  rng.uniform(0.05, 0.1))
        patient_ids = []
        for n in range(1, count + 1):
            grow = 1 - abs(n - (tumour_at.start + tumour_at.stop - 1) / 2) / (len(tumour_at) + 1)
            tumour = (*lesion[:2], lesion[2] * grow, lesion[3] * grow) if n in tumour_at else None
            image, mask = _mri_slice(rng, size, n / (count + 1), tumour)
            sid = f"{folder}_{n}"
            tifffile.imwrite(base / folder / f"{sid}.tif", image, photometric="rgb")
            tifffile.imwrite(base / folder / f"{sid}_mask.tif", mask, photometric="minisblack")
            patient_ids.append(sid)
            if mask.any():
                foreground.add(sid)
        ids += patient_ids
        by_patient[folder.rpartition("_")[0]] = tuple(patient_ids)
    with open(base / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LGG_CSV_HEADER)
        rng = np.random.default_rng(seed)
        for patient in by_patient:
            # 13 codes, age, race, ethnicity, death
            writer.writerow([patient, *rng.integers(1, 5, 13).tolist(), int(rng.integers(20, 80)),
                             3, 2, int(rng.integers(0, 2))])
    return StandIn(Path(root), tuple(sorted(ids)), {i: (size, size) for i in ids},
                   frozenset(foreground), patients=by_patient)


# --- Kvasir-Instrument ---------------------------------------------------------------------------

# Frame sizes (width, height) as in the dataset: mostly 768x576 and 720x576, some large and
# some odd ones. The last KVASIR_TEST are listed in test.txt, the others in train.txt.
KVASIR_SIZES = ((768, 576), (720, 576), (768, 576), (720, 576), (1280, 1024), (633, 531),
                (768, 576), (720, 576), (1920, 1072), (572, 532))
KVASIR_TEST = 2


def kvasir_ids(n: int, seed: int = 0) -> list[str]:
    """n ids shaped like the dataset's (25 lower-case base-36 characters starting 'ck')."""
    rng = np.random.default_rng([seed, 590])
    alphabet = np.array(list(string.digits + string.ascii_lowercase))
    return ["ck" + "".join(rng.choice(alphabet, 23)) for _ in range(n)]


def _instrument_mask(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """uint8 {0, 255}: a tool shaft entering from the border, with a rounded tip."""
    mask = np.zeros((height, width), np.uint8)
    side = int(rng.integers(4))
    t = rng.uniform(0.2, 0.8)
    start = [(t * width, height - 1), (0, t * height), (width - 1, t * height),
             (t * width, 0)][side]
    target = (rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height)
    reach = rng.uniform(0.6, 0.95)
    tip = (start[0] + reach * (target[0] - start[0]), start[1] + reach * (target[1] - start[1]))
    thickness = max(3, int(min(width, height) * rng.uniform(0.06, 0.11)))
    cv2.line(mask, tuple(int(v) for v in start), tuple(int(v) for v in tip), 255, thickness)
    cv2.circle(mask, tuple(int(v) for v in tip), int(thickness * 0.7), 255, -1)
    return mask


def write_frames_for_masks(masks: Path, images: Path, seed: int = 0) -> None:
    """images/<id>.jpg beside masks/<id>.png: a frame of each mask's size, reddish tissue with the
    instrument grey, blurred with mild noise (JPEG sizes like real frames, not like noise)."""
    images = Path(images)
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for path in sorted(Path(masks).glob("*.png")):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert gray is not None, f"{path} was written by a fixture: OpenCV reads it"
        m = gray > 0
        image: np.ndarray = np.full((*m.shape, 3), (60, 70, 160), np.uint8)  # BGR reddish tissue
        image[m] = (190, 190, 190)
        image = cv2.GaussianBlur(image, (0, 0), 3)
        image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(images / f"{path.stem}.jpg"), image)


def write_kvasir_instrument(root: Path, sizes: Sequence[tuple[int, int]] = KVASIR_SIZES,
                            n_test: int = KVASIR_TEST,
                            listed_without_files: tuple[int, int] = (0, 0),
                            seed: int = 0) -> StandIn:
    """The unpacked kvasir-instrument layout under root: for each (width, height) in sizes an
    id with masks/<id>.png (RGB, three identical channels, {0, 255}) and images/<id>.jpg; the
    last n_test ids in test.txt, the others in train.txt. listed_without_files=(a, b) adds a and
    b more ids to train.txt and test.txt without files (a partial copy, like a sample)."""
    root = Path(root)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    extra_train, extra_test = listed_without_files
    ids = kvasir_ids(len(sizes) + extra_train + extra_test, seed)
    present, absent = ids[: len(sizes)], ids[len(sizes):]
    rng = np.random.default_rng(seed)
    for i, (width, height) in zip(present, sizes, strict=True):
        mask = _instrument_mask(rng, width, height)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), np.repeat(mask[..., None], 3, axis=2))
    write_frames_for_masks(root / "masks", root / "images", seed)
    cut = len(present) - n_test
    lists = {"train": tuple(present[:cut] + absent[:extra_train]),
             "test": tuple(present[cut:] + absent[extra_train:])}
    for name, listed in lists.items():
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in listed))
    return StandIn(root, tuple(sorted(present)),
                   {i: (w, h) for i, (w, h) in zip(present, sizes)},
                   frozenset(present), split_files=lists)
