"""The structure of a sample's ``pose.json``, the pose column's one member (DESIGN 3): what ``shards verify`` checks
and what the student's loader relies on, in one place.

The pose stage writes ``{"persons": [{"keypoints": 17 x [x, y, v], "bbox": [x, y, w, h]}, ...], "crowd": [{"bbox":
[x, y, w, h], "segmentation": RLE dict or list of polygons (optional)}, ...], "source": teacher}`` in store pixels (a
model teacher's persons also carry ``score`` and ``keypoint_scores``); a person's keypoints may also be COCO's flat
list of 51 numbers.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from shards.taxonomy import JOINTS


def describe(value: Any) -> str:
    """A short account of a JSON value for a message: ``a list of 1 item(s)``, ``nothing``, ``a str``."""
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if value is None:
        return "nothing"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _numbers(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def keypoint_problem(keypoints: Any) -> str | None:
    """Why a person's keypoints are not 17 finite [x, y, v] triples (or 51 numbers), or None."""
    flat = keypoints
    if isinstance(keypoints, list) and len(keypoints) == len(JOINTS) and all(isinstance(k, list) for k in keypoints):
        if not all(len(k) == 3 for k in keypoints):
            return f"needs keypoints of {len(JOINTS)} [x, y, v] triples, got triples of other lengths"
        flat = [v for k in keypoints for v in k]
    if not _numbers(flat, 3 * len(JOINTS)):
        if isinstance(flat, list) and len(flat) == 3 * len(JOINTS):
            return "has keypoints that are not finite numbers"
        return f"needs keypoints of {len(JOINTS)} [x, y, v] triples, got {describe(keypoints)}"
    return None


def pose_problem(pose: Any) -> str | None:
    """What makes a parsed ``pose.json`` not of the structure the pose stage writes, or None."""
    if not isinstance(pose, Mapping):
        return f"holds a JSON {type(pose).__name__}, expected an object with persons and crowd"
    missing = [k for k in ("persons", "crowd") if k not in pose]
    if missing:
        return f"lacks {' and '.join(repr(k) for k in missing)} (the pose stage writes both)"
    if not isinstance(pose["persons"], list) or not isinstance(pose["crowd"], list):
        return "its persons and crowd must be lists"
    for i, person in enumerate(pose["persons"]):
        if not isinstance(person, Mapping):
            return f"persons[{i}] is {describe(person)}, expected an object with keypoints"
        problem = keypoint_problem(person.get("keypoints"))
        if problem:
            return f"persons[{i}] {problem}"
    for i, region in enumerate(pose["crowd"]):
        if not isinstance(region, Mapping):
            return f"crowd[{i}] is {describe(region)}, expected an object with bbox or segmentation"
        seg = region.get("segmentation")
        if isinstance(seg, Mapping):
            if not ("size" in seg and "counts" in seg):
                return f"crowd[{i}] has an RLE segmentation without size and counts"
        elif seg:
            if not (isinstance(seg, list) and all(isinstance(p, list) for p in seg)):
                return f"crowd[{i}] has a segmentation that is neither an RLE object nor a list of polygons"
        elif not _numbers(region.get("bbox"), 4):
            return f"crowd[{i}] needs a bbox of 4 numbers when it has no segmentation"
    return None
