"""What the network looks at: Grad-CAM and mean activation at the end of the encoder and at the end
of the decoder, for a few test cases of a run (the library side of `segbench explain`).

Grad-CAM for segmentation (Selvaraju et al. 2017; the target of pytorch-grad-cam's
SemanticSegmentationTarget): the score is the sum of the foreground logits over the predicted
mask; a layer's channels are weighted by the spatial mean of the score's gradient and summed, and
the positive part is resized to the image. Written here with two hooks rather than taken from
pytorch-grad-cam, whose dependencies (scikit-learn, ttach) segbench does not otherwise need.

The two layers are found from the forward pass, so that every model in the registry works:
the encoder's end is the last layer to produce the smallest feature map (the bottleneck), the
decoder's end the last layer whose output has more channels than the logits (before the head).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D

from segbench import SegbenchError
from segbench.viz import CONTOURS, save_figure


@dataclass
class Maps:
    layers: dict[str, str]               # "encoder end" / "decoder end" -> module name
    cam: dict[str, np.ndarray]           # role -> (H, W) in [0, 1]
    activation: dict[str, np.ndarray]    # role -> (H, W) in [0, 1], channel mean min-max scaled
    prob: np.ndarray                     # (H, W) foreground probability
    empty: bool                          # nothing predicted: the score was the whole image's
    threshold: float


def _traced(net: torch.nn.Module, image: torch.Tensor, model) -> list[tuple[str, tuple]]:
    """(module name, output shape) of every 4-D output, in the order the modules finished."""
    seen, hooks = [], []
    for name, module in net.named_modules():
        # An Identity repeats its input's layer.
        if name and not isinstance(module, torch.nn.Identity):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: seen.append((name, tuple(o.shape)))
                if torch.is_tensor(o) and o.dim() == 4 else None))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for h in hooks:
            h.remove()
    return seen


def find_layers(model, image: torch.Tensor) -> dict[str, str]:
    """The encoder's end and the decoder's end of `model` (a registry model: .net inside)."""
    net = getattr(model, "net", model)
    seen = _traced(net, image, model)
    if not seen:
        raise SegbenchError("explain: the model produced no 4-D feature maps to explain")
    classes = seen[-1][1][1]
    smallest = min(s[2] * s[3] for _, s in seen)
    encoder = [n for n, s in seen if s[2] * s[3] == smallest][-1]
    after = [n for n, s in seen[[n for n, _ in seen].index(encoder) + 1:] if s[1] > classes]
    decoder = after[-1] if after else encoder
    return {"encoder end": encoder, "decoder end": decoder}


def _scaled(a: torch.Tensor, size) -> np.ndarray:
    a = F.interpolate(a[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    a = a - a.min()
    top = a.max()
    return (a / top if top > 0 else a).cpu().numpy()


def explain(model, image: torch.Tensor, threshold: float,
            layers: dict[str, str] | None = None) -> Maps:
    """Grad-CAM and mean activation of one (1, C, H, W) image at the two layers."""
    layers = layers or find_layers(model, image)
    net = getattr(model, "net", model)
    modules = dict(net.named_modules())
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    hooks = []
    for role, name in layers.items():
        def keep(m, i, o, role=role):
            acts[role] = o
            o.register_hook(lambda g, role=role: grads.__setitem__(role, g))
        hooks.append(modules[name].register_forward_hook(keep))
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(image.float().requires_grad_(False))[:, 0]
            prob = torch.sigmoid(logits)
            mask = (prob >= threshold).float()
            empty = not bool(mask.any())
            score = (logits * (mask if not empty else torch.ones_like(mask))).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        for h in hooks:
            h.remove()
    size = image.shape[-2:]
    cam, mean = {}, {}
    for role in layers:
        a, g = acts[role].detach()[0], grads[role][0]
        weights = g.mean(dim=(1, 2))
        cam[role] = _scaled(torch.relu((weights[:, None, None] * a).sum(0)), size)
        mean[role] = _scaled(a.mean(0), size)
    return Maps(dict(layers), cam, mean, prob[0].detach().cpu().numpy(), empty, threshold)


def draw(rows, path: Path, title: str) -> None:
    """rows: (case id, uint8 image HxWxC, truth mask, Maps). Columns: image with the ground-truth
    and predicted contours, Grad-CAM and mean activation at each layer over the image."""
    roles = list(rows[0][3].layers)
    cols = 1 + 2 * len(roles)
    fig = Figure(figsize=(2.3 * cols + 0.8, 2.4 * len(rows) + 1.4), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    mappable: AxesImage | None = None
    for r, (case_id, image, truth, maps) in enumerate(rows):
        grey = image.mean(-1) if image.shape[-1] > 1 else image[..., 0]
        panels = [("image, contours", None)]
        panels += [(f"Grad-CAM, {role}\n({maps.layers[role]})", maps.cam[role]) for role in roles]
        panels += [(f"mean activation, {role}", maps.activation[role]) for role in roles]
        for c, (name, heat) in enumerate(panels):
            ax = axes[r, c]
            if heat is None:
                ax.imshow(image if image.shape[-1] == 3 else grey, cmap="gray", vmin=0, vmax=255)
                for mask, colour in ((truth > 0, CONTOURS["ground truth"]),
                                     (maps.prob >= maps.threshold, CONTOURS["prediction"])):
                    if mask.any() and not mask.all():
                        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour],
                                   linewidths=1.2)
            else:
                ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
                mappable = ax.imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(name, 30)), fontsize=8)
        empty = "\n(nothing predicted:\nscore = whole image)" if maps.empty else ""
        axes[r, 0].set_ylabel(case_id + empty, fontsize=8)
    fig.suptitle(title, fontsize=10)
    assert mappable is not None  # every row has a heat map per layer
    fig.colorbar(mappable, ax=axes[:, 1:].ravel().tolist(), shrink=0.8,
                 label="relative weight (0: none, 1: the image's most)")
    fig.legend(handles=[Line2D([], [], color=c, lw=2, label=f"{n} contour")
                        for n, c in CONTOURS.items()],
               loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    save_figure(fig, path, dpi=100)
