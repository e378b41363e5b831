"""Using trained runs: one home for evaluating a split, predicting new images and ensembles.

- `evaluation.py`: `evaluate_split` (training's final test, `eval`, `ensemble`, external sets)
  and `eval_settings` (the one precedence of eval settings: command line, then the run's own,
  then configs/train.yaml)
- `prediction.py`: the library side of `predict` (a predictor from runs, masks, overlays,
  probabilities, areas.csv)
- `ensembling.py`: which runs can be averaged and building an ensemble directory
- `cases.py`: every test case's prediction (`cases.npz`), written by the test, read by galleries
"""
