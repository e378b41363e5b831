"""Models: a registry of plain nn.Modules (see registry.py); importing this registers them all."""

from segbench.models import mcnet, smp_models, unet  # noqa: F401  (each registers its models)
from segbench.models.registry import build_model, create_model, list_models, load_trained

__all__ = ["list_models", "build_model", "create_model", "load_trained"]
