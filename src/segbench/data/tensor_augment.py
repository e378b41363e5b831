"""The augmentation presets as batched tensor operations, for batches that live on the device.

The preset is built with albumentations first (`transforms.build_augmentation`), so it is checked
and parsed exactly as on the loader path; each albumentations object is then read back into a
tensor operation with the same parameters and the same random ranges:

- flips, transposition and rot90 move pixels exactly as albumentations does (tests compare them);
- Affine / ShiftScaleRotate / Rotate are one `affine_grid` + `grid_sample` per batch (masks
  nearest-neighbour, so they stay binary); border modes map to grid_sample's padding;
- ElasticTransform and GridDistortion are displacement fields (a blurred noise field, a
  piecewise-linear grid) sampled the same way;
- RandomBrightnessContrast, RandomGamma, GaussianBlur and GaussNoise touch the image only.

Random parameters (who is flipped, angles, kernel sizes) are drawn on the host, a few numbers per
image from a numpy generator seeded with that image's item seed; per-pixel noise is drawn on the
device from a torch generator seeded from the same image's stream. Each image's augmentation is
then a function of its own item seed alone, as on the loader path: a resumed run repeats exactly,
and a batch split over processes (DDP) or accumulated steps is augmented as the whole batch.

A transform or an option without a tensor form here (see `DeviceAugmentation.build`) makes the
run keep the loader path; the caller logs which.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

# cv2 border modes -> grid_sample padding: CONSTANT (fill 0), REPLICATE, REFLECT, REFLECT_101.
# grid_sample's "reflection" mirrors about the outer pixel edges (cv2 REFLECT); REFLECT_101
# differs from it by half a pixel at the border only.
PADDING = {0: "zeros", 1: "border", 2: "reflection", 4: "reflection"}
INTERPOLATION = {0: "nearest", 1: "bilinear", 2: "bicubic"}


class Unsupported(Exception):
    """A transform (or one of its options) has no tensor form here."""


class Draw:
    """One batch's random source: a numpy generator per image, seeded with its item seed, for
    the host draws, and torch generators seeded from those for the device draws. Every
    operation draws its parameters for every image, applied or not, so that an image's stream
    never depends on the other images of its batch."""

    def __init__(self, seeds: list[int], device: torch.device):
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]
        self.device, self.size = device, len(seeds)

    def each(self, draw) -> np.ndarray:
        """draw(generator) for each image, stacked."""
        return np.array([draw(r) for r in self.rngs])

    def chosen(self, p: float) -> np.ndarray:
        return self.each(lambda r: r.random()) < p

    def uniform(self, low_high, n: int | None = None) -> np.ndarray:
        return self.each(lambda r: r.uniform(low_high[0], low_high[1], n))

    def index(self, selected: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.flatnonzero(selected), device=self.device)

    def noise(self, selected: np.ndarray, shape: tuple, uniform: bool = False) -> torch.Tensor:
        """Standard normal (or uniform [-1, 1)) noise of `shape` per selected image, on the
        device."""
        out = []
        for i in np.flatnonzero(selected):
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(self.rngs[i].integers(0, 2**62)))
            if uniform:
                out.append(torch.rand(shape, generator=gen, device=self.device) * 2 - 1)
            else:
                out.append(torch.randn(shape, generator=gen, device=self.device))
        return torch.stack(out)


# An operation: (images BxCxHxW float, masks Bx1xHxW float, selected bool[B], draw) -> both.
Op = Callable[[torch.Tensor, torch.Tensor, np.ndarray, Draw], tuple[torch.Tensor, torch.Tensor]]


def _where(selected: np.ndarray, draw: Draw, changed: torch.Tensor, kept: torch.Tensor):
    pick = torch.as_tensor(selected, device=draw.device).view(-1, *([1] * (kept.dim() - 1)))
    return torch.where(pick, changed, kept)


def flip(dim: int) -> Op:
    def op(images, masks, selected, draw):
        return (_where(selected, draw, images.flip(dim), images),
                _where(selected, draw, masks.flip(dim), masks))
    return op


def transpose(images, masks, selected, draw):
    return (_where(selected, draw, images.transpose(-1, -2), images),
            _where(selected, draw, masks.transpose(-1, -2), masks))


def rot90_batch(x: torch.Tensor, factors: np.ndarray, draw: Draw) -> torch.Tensor:
    """Each image turned by its own number of quarter turns (np.rot90's direction)."""
    out = x
    for k in (1, 2, 3):
        if (factors == k).any():
            out = _where(factors == k, draw, torch.rot90(x, k, dims=(-2, -1)), out)
    return out


def random_rotate90(images, masks, selected, draw):
    factors = draw.each(lambda r: r.integers(0, 4)) * selected  # albumentations: randint(0, 3)
    return rot90_batch(images, factors, draw), rot90_batch(masks, factors, draw)


def _warp(images, masks, grid, draw, selected, interpolation: str, padding: str):
    """grid_sample the selected images (bilinear, or the transform's own interpolation) and
    their masks (nearest: they stay binary) at `grid` (normalised input coordinates, one per
    selected image)."""
    rows = draw.index(selected)
    images, masks = images.clone(), masks.clone()
    images[rows] = F.grid_sample(images[rows], grid, mode=interpolation, padding_mode=padding,
                                 align_corners=False)
    masks[rows] = F.grid_sample(masks[rows], grid, mode="nearest", padding_mode=padding,
                                align_corners=False)
    return images, masks


def _border(t) -> str:
    mode = int(getattr(t, "border_mode", 0))
    if mode not in PADDING:
        raise Unsupported(f"{type(t).__name__} border_mode {mode}")
    if mode == 0 and (float(getattr(t, "fill", 0) or 0) != 0
                      or float(getattr(t, "fill_mask", 0) or 0) != 0):
        raise Unsupported(f"{type(t).__name__} with a fill other than 0")
    if int(getattr(t, "mask_interpolation", 0)) != 0:
        raise Unsupported(f"{type(t).__name__} mask_interpolation other than nearest")
    interpolation = int(getattr(t, "interpolation", 1))
    if interpolation not in INTERPOLATION:
        raise Unsupported(f"{type(t).__name__} interpolation {interpolation}")
    return PADDING[mode]


def affine_matrices(scale_x, scale_y, rotate_deg, shift_x, shift_y, height: int, width: int):
    """grid_sample's Bx2x3 thetas for scale, then rotation (counter-clockwise for a positive
    angle, as cv2 and albumentations), then a shift in pixels, all about the image centre.
    theta maps output to input in normalised coordinates (x_pixels = x_norm * width / 2)."""
    n = len(scale_x)
    a = np.radians(rotate_deg)
    cos, sin = np.cos(a), np.sin(a)
    forward = np.zeros((n, 2, 2))
    forward[:, 0, 0], forward[:, 0, 1] = cos * scale_x, sin * scale_y
    forward[:, 1, 0], forward[:, 1, 1] = -sin * scale_x, cos * scale_y
    inverse = np.linalg.inv(forward)
    half = np.diag([width / 2, height / 2])
    linear = np.linalg.inv(half) @ inverse @ half
    shift = np.stack([shift_x, shift_y], 1)[..., None]
    offset = np.linalg.inv(half) @ inverse @ (-shift)
    return np.concatenate([linear, offset], 2)


def affine(t) -> Op:
    """A.Affine (and ShiftScaleRotate, its subclass) or A.Rotate."""
    padding = _border(t)
    interpolation = INTERPOLATION[int(t.interpolation)]
    if isinstance(t, A.Rotate):
        if getattr(t, "crop_border", False):
            raise Unsupported("Rotate crop_border=True")
        scale = {"x": (1.0, 1.0), "y": (1.0, 1.0)}
        translate, in_pixels, rotate = {"x": (0.0, 0.0), "y": (0.0, 0.0)}, True, t.limit
    else:
        if t.fit_output or t.balanced_scale or any(v != (0.0, 0.0) for v in t.shear.values()):
            raise Unsupported("Affine with shear, fit_output or balanced_scale")
        scale, rotate = t.scale, t.rotate
        in_pixels = t.translate_percent is None  # albumentations: translate_px then, (0, 0) unset
        translate = t.translate_px if in_pixels else t.translate_percent
    keep_ratio = getattr(t, "keep_ratio", False)

    def op(images, masks, selected, draw):
        sx = draw.uniform(scale["x"])
        sy = sx if keep_ratio else draw.uniform(scale["y"])
        tx, ty = draw.uniform(translate["x"]), draw.uniform(translate["y"])
        angle = draw.uniform(rotate)
        if not selected.any():
            return images, masks
        h, w = images.shape[-2:]
        if not in_pixels:
            tx, ty = tx * w, ty * h
        theta = affine_matrices(sx, sy, angle, tx, ty, h, w)[selected]
        theta = torch.as_tensor(theta, dtype=images.dtype, device=images.device)
        grid = F.affine_grid(theta, [len(theta), 1, h, w], align_corners=False)
        return _warp(images, masks, grid, draw, selected, interpolation, padding)
    return op


def gaussian_kernels(sigmas: np.ndarray, radii: np.ndarray, radius: int) -> np.ndarray:
    """One normalised 1-D Gaussian per row, of half-width `radius` (zero beyond each row's own)."""
    x = np.arange(-radius, radius + 1)[None]
    k = np.exp(-(x ** 2) / (2 * np.asarray(sigmas, float)[:, None] ** 2))
    k[np.abs(x) > np.asarray(radii)[:, None]] = 0
    return k / k.sum(1, keepdims=True)


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable blur of each image (BxCxHxW) with its own 1-D kernel (BxK), mirrored borders
    (cv2's default BORDER_REFLECT_101) where the image is large enough, else replicated."""
    b, c, h, w = x.shape
    r = kernels.shape[1] // 2
    weights = kernels.repeat_interleave(c, 0).to(x.dtype)
    flat = x.reshape(1, b * c, h, w)
    mode = "reflect" if r < min(h, w) else "replicate"
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode=mode), weights[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode=mode), weights[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def gaussian_blur(t) -> Op:
    low, high = t.blur_limit
    if low == 0 or high == 0:
        raise Unsupported("GaussianBlur with a kernel size computed from sigma (blur_limit 0)")
    sizes = [k for k in range(int(low), int(high) + 1) if k % 2 == 1]

    def op(images, masks, selected, draw):
        size = draw.each(lambda r: r.choice(sizes))
        sigma = draw.uniform(t.sigma_limit)
        if not selected.any():
            return images, masks
        kernels = gaussian_kernels(sigma[selected], size[selected] // 2, max(sizes) // 2)
        rows = draw.index(selected)
        images = images.clone()
        images[rows] = blur(images[rows], torch.as_tensor(kernels, device=images.device))
        return images, masks
    return op


def brightness_contrast(t) -> Op:
    def op(images, masks, selected, draw):
        alpha = 1 + draw.uniform(t.contrast_limit)
        beta = draw.uniform(t.brightness_limit)
        alpha, beta = np.where(selected, alpha, 1.0), np.where(selected, beta, 0.0)
        a = torch.as_tensor(alpha, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
        b = torch.as_tensor(beta, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
        base = 255.0 if t.brightness_by_max else images.mean((1, 2, 3), keepdim=True)
        return (images * a + b * base).clamp(0, 255), masks
    return op


def gamma(t) -> Op:
    def op(images, masks, selected, draw):
        g = np.where(selected, draw.uniform(t.gamma_limit) / 100.0, 1.0)
        g = torch.as_tensor(g, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
        return 255.0 * (images / 255.0).clamp(0, 1) ** g, masks
    return op


def gauss_noise(t) -> Op:
    if t.noise_scale_factor != 1:
        raise Unsupported("GaussNoise noise_scale_factor other than 1")

    def op(images, masks, selected, draw):
        std = draw.uniform(t.std_range)[selected] * 255.0
        mean = draw.uniform(t.mean_range)[selected] * 255.0
        if not selected.any():
            return images, masks
        _, c, h, w = images.shape
        noise = draw.noise(selected, (c if t.per_channel else 1, h, w)).to(images.dtype)
        s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
        m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
        rows = draw.index(selected)
        images = images.clone()
        images[rows] = (images[rows] + noise * s + m).clamp(0, 255)
        return images, masks
    return op


def _pixel_grid(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """A grid_sample grid reading input pixel (x + dx, y + dy) for output pixel (x, y)."""
    b, h, w = dx.shape
    ys = torch.arange(h, device=dx.device, dtype=dx.dtype).view(1, h, 1)
    xs = torch.arange(w, device=dx.device, dtype=dx.dtype).view(1, 1, w)
    gx = (2 * (xs + dx) + 1) / w - 1
    gy = (2 * (ys + dy) + 1) / h - 1
    return torch.stack([gx, gy], -1)


def elastic(t) -> Op:
    """Simard's elastic deformation as albumentations draws it: a noise field per axis
    (gaussian or uniform), blurred with `sigma` (cv2's kernel: 8 sigma + 1 wide, 17 when
    approximate), times `alpha` pixels."""
    padding = _border(t)
    interpolation = INTERPOLATION[int(t.interpolation)]
    radius = 8 if t.approximate else (int(round(t.sigma * 8 + 1)) | 1) // 2

    def op(images, masks, selected, draw):
        _, _, h, w = images.shape
        n = int(selected.sum())
        if n == 0:
            return images, masks
        field = draw.noise(selected, (1 if t.same_dxdy else 2, h, w),
                           uniform=t.noise_distribution == "uniform")
        kernel = gaussian_kernels(np.full(n, t.sigma), np.full(n, radius), radius)
        kernel_t = torch.as_tensor(kernel, device=images.device, dtype=field.dtype)
        field = blur(field, kernel_t) * t.alpha
        dx, dy = field[:, 0], field[:, -1]
        return _warp(images, masks, _pixel_grid(dx, dy), draw, selected, interpolation, padding)
    return op


def distorted_axis(steps: np.ndarray, size: int, num_steps: int, normalized: bool) -> np.ndarray:
    """Source coordinate of every output pixel along one axis: piecewise linear through cells of
    size // num_steps stretched by `steps` (albumentations' GridDistortion grid)."""
    step = max(1, size // num_steps)
    steps = np.resize(steps, len(range(0, size, step)))  # more cells than steps on tiny images
    if normalized:  # the stretched cells add up to the image again
        starts = list(range(0, size, step))
        lengths = np.array([step * steps[i] for i in range(len(starts))])
        widths = np.array([min(s + step, size) - s for s in starts], float)
        lengths *= widths.sum() / lengths.sum()
    out = np.empty(size)
    prev = 0.0
    for i, start in enumerate(range(0, size, step)):
        end = min(start + step, size)
        cur = prev + (lengths[i] if normalized else step * steps[i])
        out[start:end] = np.linspace(prev, cur, end - start)
        prev = cur
    return out


def grid_distortion(t) -> Op:
    padding = _border(t)
    interpolation = INTERPOLATION[int(t.interpolation)]

    def op(images, masks, selected, draw):
        _, _, h, w = images.shape
        xs = 1 + draw.uniform(t.distort_limit, t.num_steps + 1)
        ys = 1 + draw.uniform(t.distort_limit, t.num_steps + 1)
        rows = np.flatnonzero(selected)
        if len(rows) == 0:
            return images, masks
        mx = np.stack([distorted_axis(xs[i], w, t.num_steps, t.normalized) for i in rows])
        my = np.stack([distorted_axis(ys[i], h, t.num_steps, t.normalized) for i in rows])
        mx = torch.as_tensor(mx, dtype=images.dtype, device=images.device)
        my = torch.as_tensor(my, dtype=images.dtype, device=images.device)
        base_x = torch.arange(w, device=images.device, dtype=images.dtype)
        base_y = torch.arange(h, device=images.device, dtype=images.dtype)
        dx = (mx - base_x)[:, None, :].expand(-1, h, -1)
        dy = (my - base_y)[:, :, None].expand(-1, -1, w)
        return _warp(images, masks, _pixel_grid(dx, dy), draw, selected, interpolation, padding)
    return op


def one_of(t, children: list[Op]) -> Op:
    weights = np.asarray(t.transforms_ps, float)
    weights = weights / weights.sum()

    def op(images, masks, selected, draw):
        choice = draw.each(lambda r: r.choice(len(children), p=weights))
        for i, child in enumerate(children):
            images, masks = child(images, masks, selected & (choice == i), draw)
        return images, masks
    return op


SIMPLE = {A.HorizontalFlip: lambda t: flip(-1), A.VerticalFlip: lambda t: flip(-2),
          A.Transpose: lambda t: transpose, A.RandomRotate90: lambda t: random_rotate90,
          A.RandomBrightnessContrast: brightness_contrast, A.RandomGamma: gamma,
          A.GaussianBlur: gaussian_blur, A.GaussNoise: gauss_noise,
          A.ElasticTransform: elastic, A.GridDistortion: grid_distortion,
          A.Affine: affine, A.Rotate: affine}


def _translate(t) -> tuple[Op, float]:
    """(operation, probability) of one albumentations transform; Unsupported where there is none."""
    if type(t) is A.OneOf:
        return one_of(t, [_translate(c)[0] for c in t.transforms]), t.p
    factory = SIMPLE.get(type(t)) or next((f for cls, f in SIMPLE.items()
                                           if cls is A.Affine and isinstance(t, cls)), None)
    if factory is None:
        raise Unsupported(type(t).__name__)
    return factory(t), t.p


class DeviceAugmentation:
    """A preset's transforms, in order, each applied to an image with its own probability."""

    def __init__(self, ops: list[tuple[Op, float]]):
        self.ops = ops

    @classmethod
    def build(cls, compose: A.Compose | None) -> DeviceAugmentation | None:
        """From the loader path's Compose (None: no augmentation); Unsupported names the first
        transform or option without a tensor form."""
        if compose is None:
            return None
        if compose.p != 1:
            raise Unsupported("a Compose with p < 1")
        return cls([_translate(t) for t in compose.transforms])

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, seeds: list[int]):
        """uint8 BxCxHxW images and Bx1xHxW masks -> the same, augmented; a function of `seeds`
        (one per image, from the seeded sampler) alone."""
        draw = Draw(seeds, images.device)
        x, m = images.float(), masks.float()
        for op, p in self.ops:
            x, m = op(x, m, draw.chosen(p), draw)
        return x.round_().clamp_(0, 255).to(torch.uint8), m.to(torch.uint8)


def unsupported_reason(compose: A.Compose | None) -> str | None:
    """Why `compose` has no tensor form (None: it has one)."""
    try:
        DeviceAugmentation.build(compose)
    except Unsupported as err:
        return str(err)
    return None

