"""The Y-MAP-Net student: model, target rendering, augmentation, loss, metrics, train/eval/predict."""
