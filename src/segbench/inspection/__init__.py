"""Looking inside a model and its data, for `explain` and `preview`.

- `gradcam.py`: Grad-CAM and activation maps of a trained run's model (`segbench explain`)
- `augmentations.py`: an augmentation preset drawn on training images (`segbench preview`)
"""
