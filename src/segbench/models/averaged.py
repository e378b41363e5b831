"""An ensemble of trained models whose foreground probabilities are averaged.

`Ensemble` holds the members (each with its own autocast dtype) and is evaluated, predicted and
timed like one model: `segbench.inference.loop.predict_probs` averages the members'
probabilities (each member's own flip TTA included when asked), never their logits. Its
forward() returns the logit of that average, for code that expects logits.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from segbench.metrics import probabilities
from segbench.task import BINARY


class Ensemble(nn.ModuleList):
    def __init__(self, members, amp_dtypes=None):
        super().__init__(members)
        self.amp_dtypes = list(amp_dtypes) if amp_dtypes is not None else [None] * len(self)
        if len(self.amp_dtypes) != len(self):
            raise ValueError("one autocast dtype per member is needed")

    @property
    def task(self):
        """The members' task (segbench.task; ensemble.py checks that they share one)."""
        return getattr(self[0], "task", BINARY)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The mean of the members' probabilities (float32): sigmoid, or softmax for a
        multiclass task."""
        total: torch.Tensor | None = None
        for member, dtype in zip(self, self.amp_dtypes, strict=True):
            cast = (contextlib.nullcontext() if dtype is None
                    else torch.autocast(images.device.type, dtype=dtype))
            with cast:
                p = probabilities(member(images).float(), self.task)
            total = p if total is None else total + p
        assert total is not None, "an ensemble has members"
        return total / len(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities(images)
        if self.task.kind == "multiclass":
            return probs.clamp_min(1e-12).log()
        return torch.logit(probs)
