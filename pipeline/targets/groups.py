"""Segmentation groups (DESIGN 5.3): contiguous COCO-panoptic class map -> groups.png values 0..10."""

from __future__ import annotations

import numpy as np

from shards.taxonomy import GROUP_UNLABELED, GROUPS, PANOPTIC_CLASSES


def group_lut() -> np.ndarray:
    """(256,) uint8 table: contiguous class id -> group value (1..10); void and unknown ids -> 0."""
    lut = np.full(256, GROUP_UNLABELED, np.uint8)
    for c in PANOPTIC_CLASSES:
        lut[c.contiguous_id] = GROUPS.index(c.group) + 1
    return lut


_LUT = group_lut()


def groups_from_classes(classes: np.ndarray) -> np.ndarray:
    """Map an (H, W) uint8 contiguous class map (255 = void) to group values (0 = unlabeled, 1..10).

    Args:
        classes: (H, W) uint8 contiguous COCO-panoptic ids 0..132, 255 void.

    Returns:
        (H, W) uint8 group map.
    """
    classes = np.asarray(classes)
    if classes.dtype != np.uint8:
        raise ValueError(f"class map must be uint8 contiguous ids, got {classes.dtype}")
    if classes.ndim == 2 and classes.size:
        import cv2

        return cv2.LUT(classes, _LUT)  # several times faster than numpy fancy indexing
    return _LUT[classes]
