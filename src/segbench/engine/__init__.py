"""The shared training loop (trainer.py) and early stopping (early_stopping.py)."""
