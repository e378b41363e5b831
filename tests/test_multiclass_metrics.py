"""Multi-class and multi-label metrics (docs/metrics.md, "Several classes") against independent
implementations: MONAI's DiceMetric and HD95 and smp's get_stats, on random label maps with
empty classes and ignored pixels."""

import numpy as np
import pytest
import torch

from segbench import SegbenchError
from segbench.metrics import (
    class_confusion,
    label_confusion,
    per_image_classes,
    summarize,
    summarize_classes,
)
from segbench.task import IGNORE, task_of

C = 4


def random_maps(seed: int, n: int = 6, size: int = 24):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, C, (n, size, size), generator=g)
    pred = torch.where(torch.rand(n, size, size, generator=g) < 0.7, target,
                       torch.randint(0, C, (n, size, size), generator=g))
    # Empty classes: class 3 absent from image 0's truth and prediction; class 2 absent from
    # image 1's truth but predicted (its false positives must count).
    target[0][target[0] == 3] = 0
    pred[0][pred[0] == 3] = 0
    target[1][target[1] == 2] = 1
    pred[1, :4, :4] = 2
    ignore = torch.rand(n, size, size, generator=g) < 0.1
    return pred, target.masked_fill(ignore, IGNORE), ignore


def test_class_confusion_matches_smp_get_stats():
    from segmentation_models_pytorch.metrics import get_stats

    pred, target, _ = random_maps(0)
    ours = class_confusion(pred, target, C, ignore=IGNORE)
    tp, fp, fn, tn = get_stats(pred, target, mode="multiclass", num_classes=C, ignore_index=IGNORE)
    assert torch.equal(ours, torch.stack([tp, fp, fn, tn], 2))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_per_class_dice_matches_monai(seed):
    from monai.metrics import DiceMetric

    pred, target, ignore = random_maps(seed)
    counts = class_confusion(pred, target, C, ignore=IGNORE)
    names = ["background", "a", "b", "c"]
    ours = per_image_classes(counts, names, foreground=[1, 2, 3])
    # MONAI has no ignore index: ignored pixels become background in both maps, which changes
    # no foreground class's counts.
    t = target.masked_fill(ignore, 0)
    p = pred.masked_fill(ignore, 0)
    onehot = lambda x: torch.nn.functional.one_hot(x, C).permute(0, 3, 1, 2).float()  # noqa: E731
    monai = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(
        onehot(p), onehot(t)).numpy()
    for k, name in enumerate(names[1:]):
        np.testing.assert_allclose(ours[f"dice_{name}"], monai[:, k], atol=1e-6)
    np.testing.assert_allclose(ours["dice"], monai.mean(1), atol=1e-6)
    # The stated rules: absent from both -> 1; predicted but absent from the truth -> 0.
    assert ours["dice_c"][0] == 1.0
    assert ours["dice_b"][1] == 0.0


def test_summary_is_mean_over_foreground_and_iou_below_dice():
    pred, target, _ = random_maps(4)
    counts = class_confusion(pred, target, C, ignore=IGNORE)
    names = ["background", "a", "b", "c"]
    s = summarize_classes(counts, names, foreground=[1, 2, 3])
    assert s["dice"] == pytest.approx(np.mean([s["dice_a"], s["dice_b"], s["dice_c"]]))
    assert s["dice_micro"] == pytest.approx(np.mean([s[f"dice_micro_{n}"] for n in "abc"]))
    assert "dice_background" in s and s["dice"] != pytest.approx(
        np.mean([s[f"dice_{n}"] for n in names]))
    for n in names:
        assert s[f"iou_{n}"] <= s[f"dice_{n}"] + 1e-12
    # A class's figures are the binary figures of its one-vs-rest masks.
    binary = summarize(counts[:, 2])
    assert s["dice_b"] == binary["dice"] and s["iou_micro_b"] == binary["iou_micro"]


def test_ignored_pixels_count_nowhere():
    target = torch.tensor([[[1, 1], [IGNORE, 0]]])
    pred = torch.tensor([[[1, 0], [1, 0]]])
    c = class_confusion(pred, target, 2, ignore=IGNORE)[0]
    assert c.sum(1).tolist() == [3, 3]  # 3 valid pixels per class, the ignored one in nothing
    assert c[1].tolist() == [1, 0, 1, 1]


def test_label_confusion_per_channel_with_overlap():
    g = torch.Generator().manual_seed(5)
    target = (torch.rand(3, 2, 16, 16, generator=g) < 0.3).to(torch.uint8)
    target[:, 1] |= target[:, 0]  # overlapping structures
    prob = torch.rand(3, 2, 16, 16, generator=g)
    ours = label_confusion(prob, target, 0.5)
    from segmentation_models_pytorch.metrics import get_stats

    tp, fp, fn, tn = get_stats(prob, target.long(), mode="multilabel", threshold=0.5)
    assert torch.equal(ours, torch.stack([tp, fp, fn, tn], 2))


def test_hd95_per_class_matches_monai():
    from monai.metrics import compute_hausdorff_distance

    from segbench.metrics.surface import hd95_assd

    pred, target, ignore = random_maps(6, n=2, size=32)
    t, p = target.masked_fill(ignore, 0), pred.masked_fill(ignore, 0)
    for k in (1, 2):
        for i in range(2):
            a, b = (p[i] == k).numpy(), (t[i] == k).numpy()
            if not a.any() or not b.any():
                continue
            ours = hd95_assd(a, b)[0]
            ref = compute_hausdorff_distance(torch.from_numpy(a)[None, None].float(),
                                             torch.from_numpy(b)[None, None].float(),
                                             include_background=True, percentile=95).item()
            assert ours == pytest.approx(ref, abs=1e-4)


def test_task_declarations():
    t = task_of({"task": "multiclass", "classes": {2: "tip", 0: "background", 1: "shaft"},
                 "ignore_index": 255})
    assert t.names == ("background", "shaft", "tip") and t.values == (0, 1, 2)
    assert t.channels == 3 and t.foreground == (1, 2) and t.foreground_names == ("shaft", "tip")
    assert task_of({}).kind == "binary" and task_of({}).channels == 1
    ml = task_of({"task": "multilabel", "classes": ["tumour", "oedema"]})
    assert ml.channels == 2 and ml.foreground == (0, 1)
    for bad, words in [({"task": "multiclass"}, "needs dataset.classes"),
                       ({"task": "multiclass", "classes": {0: "a", 1: "a"}}, "must differ"),
                       ({"task": "multiclass", "classes": {0: "a", 255: "b"}, "ignore_index": 255},
                        "also the value"),
                       ({"task": "binary", "classes": {0: "a", 1: "b"}}, "task=multiclass"),
                       ({"task": "segment"}, "use one of"),
                       ({"task": "multilabel"}, "needs dataset.classes")]:
        with pytest.raises(SegbenchError, match=words):
            task_of(bad)


def test_class_argmax_is_argmax_with_first_index_on_ties():
    from segbench.metrics import class_argmax

    g = torch.Generator().manual_seed(7)
    probs = torch.rand(3, 4, 9, 9, generator=g).round(decimals=1)  # many ties
    assert torch.equal(class_argmax(probs).long(), probs.argmax(1))
