"""Where and how the computation runs, for training and inference alike.

- `device.py`: the device (CUDA, MPS, CPU), precision (autocast), seeding and RNG states
- `distributed.py`: several processes (the process group, rank 0's decisions and writes,
  `FollowerRun`: the run directory as the other ranks use it, gathering evaluation counts,
  starting N workers)
"""
