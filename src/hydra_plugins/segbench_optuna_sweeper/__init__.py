"""segbench's Optuna sweeper plugin for Hydra (configs/hydra/sweeper/segbench_optuna.yaml)."""
