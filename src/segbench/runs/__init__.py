"""Run directories and what is kept in them: one home for the files a run, a sweep or a search
leaves on disk.

- `rundir.py`: the run directory (file names, atomic records, status, the resume decision, the
  lock) and the safe YAML reader for a folder someone else wrote
- `checkpoint.py`: the checkpoint file format (atomic writes, weights-only loading)
- `sweeps.py`: sweep directories (readable names, sweep.json, the resume of a sweep)
- `search.py`: an Optuna search's bookkeeping (objective, study record, report section)

Nothing here imports `engine/`, `models/` or `inference/`: the engine hands the run directory
plain values and state dicts, and reads them back.
"""
