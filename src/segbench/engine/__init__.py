"""The shared training loop (trainer.py), evaluation (evaluate.py), checkpoints and early stopping."""
