"""An ensemble of trained models whose foreground probabilities are averaged.

`Ensemble` holds the members (each with its own autocast dtype) and is evaluated, predicted and
timed like one model: `segbench.engine.evaluate.predict_probs` averages the members'
probabilities (each member's own flip TTA included when asked), never their logits. Its
forward() returns the logit of that average, for code that expects logits.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class Ensemble(nn.ModuleList):
    def __init__(self, members, amp_dtypes=None):
        super().__init__(members)
        self.amp_dtypes = list(amp_dtypes) if amp_dtypes is not None else [None] * len(self)
        if len(self.amp_dtypes) != len(self):
            raise ValueError("one autocast dtype per member is needed")

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The mean of the members' sigmoid probabilities (float32)."""
        total = None
        for member, dtype in zip(self, self.amp_dtypes, strict=True):
            cast = (contextlib.nullcontext() if dtype is None
                    else torch.autocast(images.device.type, dtype=dtype))
            with cast:
                p = torch.sigmoid(member(images).float())
            total = p if total is None else total + p
        return total / len(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.probabilities(images))
