"""Groups (DESIGN 5.3): every one of the 133 panoptic classes maps to exactly one group, in each id space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.coco import load_split
from pipeline.samples import groups_sample
from pipeline.targets.groups import group_lut, groups_from_classes
from shards.codecs import decode_png
from shards.taxonomy import GROUPS, PANOPTIC_CLASSES, STUFF_CLASSES, THING_CLASSES
from teachers.panoptic_ids import contiguous_from_coco_png, contiguous_from_detectron2

# DESIGN 5.3, copied verbatim: the table the taxonomy must implement.
DESIGN_TABLE = {
    "Person": "person",
    "Vehicle": "bicycle, car, motorcycle, airplane, bus, train, truck, boat",
    "Animal": "bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe",
    "Object": "backpack, umbrella, handbag, tie, suitcase, frisbee, skis, snowboard, sports ball, kite, "
              "baseball bat, baseball glove, skateboard, surfboard, tennis racket, bottle, wine glass, cup, fork, "
              "knife, spoon, bowl, banana, apple, sandwich, orange, broccoli, carrot, hot dog, pizza, donut, cake, "
              "sink, book, clock, vase, scissors, teddy bear, banner, blanket, fruit, light, net, pillow, tent, "
              "towel, food-other-merged",
    "Furniture": "bench, chair, couch, potted plant, bed, dining table, toilet, counter, mirror-stuff, shelf, "
                 "cabinet-merged, table-merged",
    "Appliance": "tv, laptop, mouse, remote, keyboard, cell phone, microwave, oven, toaster, refrigerator, "
                 "hair drier, toothbrush",
    "Material": "curtain, floor-wood, fence-merged, ceiling-merged, floor-other-merged, paper-merged, rug-merged",
    "Obstacle": "traffic light, fire hydrant, stop sign, parking meter, cardboard, door-stuff, wall-brick, "
                "wall-stone, wall-tile, wall-wood, wall-other-merged",
    "Building": "bridge, house, platform, playingfield, railroad, road, roof, stairs, window-blind, window-other, "
                "pavement-merged, building-other-merged",
    "Nature": "flower, gravel, river, sand, sea, snow, water-other, tree-merged, sky-other-merged, mountain-merged, "
              "grass-merged, dirt-merged, rock-merged",
}


def _expected_group_of_name() -> dict[str, int]:
    out: dict[str, int] = {}
    for group, names in DESIGN_TABLE.items():
        for name in names.split(", "):
            assert name not in out, f"{name} listed twice in DESIGN 5.3"
            out[name] = GROUPS.index(group) + 1
    return out


def _assert_each_class_in_exactly_one_group(classes: np.ndarray, groups: np.ndarray) -> None:
    expected = _expected_group_of_name()
    seen = {}
    for c in PANOPTIC_CLASSES:
        values = np.unique(groups[classes == c.contiguous_id])
        assert values.size == 1, f"{c.name} maps to groups {values.tolist()}"
        seen[c.name] = int(values[0])
    assert seen == expected  # all 133, each in its DESIGN group, none unlabeled


def test_design_table_covers_133_classes_once() -> None:
    expected = _expected_group_of_name()
    assert len(expected) == 133 == len(PANOPTIC_CLASSES)
    assert set(expected) == {c.name for c in PANOPTIC_CLASSES}


def test_contiguous_ids() -> None:
    classes = np.array([[c.contiguous_id for c in PANOPTIC_CLASSES] + [255]], np.uint8)
    groups = groups_sample(classes)["groups.png"]
    assert groups.dtype == np.uint8 and groups[0, -1] == 0
    _assert_each_class_in_exactly_one_group(classes, groups)
    lut = group_lut()
    assert (lut[133:] == 0).all() and set(lut[:133].tolist()) == set(range(1, 11))


def test_detectron2_separated_ids() -> None:
    # one segment per class: things use category 0..79, stuff 1..53 (index 0 = "things")
    infos, seg = [], np.zeros((1, 133 + 1), np.int32)
    for i, c in enumerate(THING_CLASSES):
        infos.append({"id": i + 1, "isthing": True, "category_id": i})
    for i, c in enumerate(STUFF_CLASSES):
        infos.append({"id": 81 + i, "isthing": False, "category_id": i + 1})
    seg[0, :133] = [s["id"] for s in infos]  # last pixel: id 0 = no segment
    classes = contiguous_from_detectron2(seg, infos)
    assert classes[0, -1] == 255
    groups = groups_from_classes(classes)
    assert groups[0, -1] == 0
    _assert_each_class_in_exactly_one_group(classes, groups)


def test_coco_panoptic_png_ids() -> None:
    ids = np.arange(1, 134, dtype=np.int64) * 1031  # segment ids spread over all three RGB bytes
    infos = [{"id": int(i), "category_id": c.coco_id} for i, c in zip(ids, PANOPTIC_CLASSES)]
    seg = np.concatenate([ids, [0]])[None, :]
    rgb = np.stack([seg % 256, seg // 256 % 256, seg // 65536], axis=-1).astype(np.uint8)
    assert rgb[..., 2].max() > 0
    classes = contiguous_from_coco_png(rgb, infos)
    groups = groups_from_classes(classes)
    assert classes[0, -1] == 255 and groups[0, -1] == 0
    _assert_each_class_in_exactly_one_group(classes, groups)


def test_demo_panoptic_ground_truth_groups(demo_root: Path) -> None:
    rec = next(r for r in load_split(demo_root, "train2017") if r.image_id == 1000)  # the park scene
    rgb = decode_png(Path(rec.panoptic["file"]).read_bytes())
    groups = groups_from_classes(contiguous_from_coco_png(rgb, rec.panoptic["segments_info"]))
    person, nature, obj = (GROUPS.index(g) + 1 for g in ("Person", "Nature", "Object"))
    assert set(np.unique(groups).tolist()) == {person, nature, obj}
    kp = rec.persons[0]["keypoints"]
    assert groups[int(kp[11][1]), int((kp[11][0] + kp[12][0]) / 2)] == person  # between the hips
    assert groups[5, 5] == nature  # sky


def test_rejects_wider_ids() -> None:
    with pytest.raises(ValueError, match="uint8"):
        groups_from_classes(np.zeros((2, 2), np.int32))
