"""Early stopping on a validation metric that should rise (validation IoU)."""

from __future__ import annotations

import math


class EarlyStopping:
    def __init__(self, patience: int, min_delta: float = 0.0):
        if patience < 1:
            raise ValueError("early stopping patience must be >= 1")
        self.patience, self.min_delta = patience, min_delta
        self.best = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best (by more than min_delta)."""
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
