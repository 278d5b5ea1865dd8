"""Conversions of panoptic segment maps (detectron2 output, COCO panoptic PNG) to contiguous class maps.

The contiguous ids are those of ``shards.taxonomy.PANOPTIC_CLASSES`` (0..132, detectron2's
``COCO_CATEGORIES`` order); pixels of no segment, or of a segment whose category is unknown, become
``PANOPTIC_VOID`` (255).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from shards.taxonomy import CLASS_BY_COCO_ID, PANOPTIC_VOID, STUFF_CLASSES, THING_CLASSES

#: ``TeacherSpec.outputs`` of every panoptic teacher (model or ground truth): its one per-image output.
PANOPTIC_OUTPUTS = {"classes": "uint8 (H, W) contiguous class 0..132, 255 = void, original resolution"}


def _paint(ids: np.ndarray, segment_classes: Mapping[int, int]) -> np.ndarray:
    """Map every pixel's segment id to its class (uint8), unknown ids to void; vectorised."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    lut = np.array([segment_classes.get(int(u), PANOPTIC_VOID) for u in uniq], dtype=np.uint8)
    return lut[inverse.reshape(ids.shape)]


def detectron2_segment_class(info: Mapping[str, Any]) -> int:
    """Contiguous class of one detectron2 panoptic segment ("separated" ids), or void if out of range.

    Panoptic FPN numbers things 0..79 (the 80 thing classes) and stuff 1..53 (index 0 of its 54 stuff
    classes is "things").
    """
    cat = int(info["category_id"])
    if info.get("isthing", False):
        return THING_CLASSES[cat].contiguous_id if 0 <= cat < len(THING_CLASSES) else PANOPTIC_VOID
    return STUFF_CLASSES[cat - 1].contiguous_id if 1 <= cat <= len(STUFF_CLASSES) else PANOPTIC_VOID


def contiguous_from_detectron2(panoptic_seg: Any, segments_info: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Class map of a detectron2 panoptic prediction.

    Args:
        panoptic_seg: (H, W) integer segment ids (numpy array or torch tensor); 0 = no segment.
        segments_info: detectron2's list of {"id", "isthing", "category_id", ...}.

    Returns:
        uint8 (H, W) contiguous class ids 0..132, 255 = void.
    """
    ids = np.asarray(panoptic_seg.cpu() if hasattr(panoptic_seg, "cpu") else panoptic_seg)
    classes = {int(s["id"]): detectron2_segment_class(s) for s in segments_info}
    classes.pop(0, None)
    return _paint(ids.astype(np.int64), classes)


def contiguous_from_coco_png(rgb_png: np.ndarray, segments_info: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Class map of a COCO panoptic ground-truth PNG.

    Args:
        rgb_png: (H, W, 3) uint8 RGB, segment id = R + 256 G + 256^2 B (0 = unlabeled).
        segments_info: the annotation's list of {"id", "category_id" (COCO id), ...}.

    Returns:
        uint8 (H, W) contiguous class ids 0..132, 255 = void.
    """
    if rgb_png.ndim != 3 or rgb_png.shape[2] != 3:
        raise ValueError(f"a COCO panoptic PNG is (H, W, 3) RGB, got shape {rgb_png.shape}")
    rgb = rgb_png.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    classes = {}
    for s in segments_info:
        cls = CLASS_BY_COCO_ID.get(int(s["category_id"]))
        classes[int(s["id"])] = cls.contiguous_id if cls is not None else PANOPTIC_VOID
    classes.pop(0, None)
    return _paint(ids, classes)
