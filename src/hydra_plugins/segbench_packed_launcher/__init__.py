"""segbench's packed launcher plugin for Hydra: several jobs at once on each GPU
(configs/hydra/launcher/packed.yaml)."""
