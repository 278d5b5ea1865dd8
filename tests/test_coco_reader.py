"""COCO reader: records from the demo root, clear errors for missing or malformed files, images without annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.coco import CocoError, ImageRecord, load_split


@pytest.fixture()
def coco_copy(demo_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(demo_root / "annotations", root / "annotations")
    return root


def test_records_of_the_demo(demo_root: Path) -> None:
    records = load_split(demo_root, "train2017")
    by_id = {r.image_id: r for r in records}
    assert [r.image_id for r in records] == sorted(by_id)
    astro = by_id[397133]
    assert (astro.width, astro.height, astro.file_name) == (512, 512, "000000397133.jpg")
    assert Path(astro.path) == (demo_root / "train2017" / "000000397133.jpg").resolve()
    assert len(astro.persons) == 1 and astro.persons[0]["keypoints"][0] == [222.0, 128.0, 2]
    assert astro.captions[0].startswith("A smiling woman astronaut")
    assert astro.panoptic["file"].endswith("panoptic_train2017/000000397133.png")
    street = by_id[1268]
    assert len(street.persons) == 1 and len(street.crowd) == 1
    assert set(street.crowd[0]["segmentation"]) == {"size", "counts"}
    park = by_id[1000]
    assert len(park.persons) == 2 and all(p["keypoints"][k][2] == 2 for p in park.persons for k in range(17))


def test_record_is_json_able_and_round_trips(demo_root: Path) -> None:
    rec = load_split(demo_root, "val2017")[0]
    data = json.loads(json.dumps(rec.to_record()))
    assert ImageRecord.from_record(data) == rec


@pytest.mark.parametrize("kind", ["instances", "person_keypoints", "captions"])
def test_missing_annotation_file_names_it(coco_copy: Path, kind: str) -> None:
    (coco_copy / "annotations" / f"{kind}_train2017.json").unlink()
    with pytest.raises(CocoError, match=f"not found: .*{kind}_train2017.json"):
        load_split(coco_copy, "train2017")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"annotations": []}', "no 'images' list"),
    ('{"images": [{"id": 1}], "annotations": []}', "needs id, file_name, width and height"),
    ('{"images": [], "annotations": [{"image_id": 1}]}', "malformed"),
])
def test_malformed_annotation_file_names_it(coco_copy: Path, content: str, message: str) -> None:
    path = coco_copy / "annotations" / "captions_train2017.json"
    path.write_text(content)
    with pytest.raises(CocoError, match=message) as err:
        load_split(coco_copy, "train2017")
    assert "captions_train2017.json" in str(err.value) and "\n" not in str(err.value)


def test_malformed_person_annotations_are_dropped_with_a_line(coco_copy: Path) -> None:
    path = coco_copy / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(path.read_text())
    anns = {a["id"]: a for a in data["annotations"]}
    anns[7]["keypoints"] = [1, 2, 2]  # the astronaut: 3 values, not 51
    anns[47]["bbox"] = [10.0, 25.0, -5.0, 575.0]  # a negative width
    crowd = next(a for a in data["annotations"] if a.get("iscrowd") and a["image_id"] == 1268)
    crowd["segmentation"]["counts"] = crowd["segmentation"]["counts"][:-1]  # covers less than the image
    path.write_text(json.dumps(data))
    dropped: list = []
    records = {r.image_id: r for r in load_split(coco_copy, "train2017", dropped)}
    reasons = {d["annotation_id"]: d["reason"] for d in dropped}
    assert set(reasons) == {7, 47, crowd["id"]} and all(d["file"] == path.name for d in dropped)
    assert "keypoints are not 17 finite" in reasons[7] and "bbox" in reasons[47]
    assert "crowd RLE counts cover" in reasons[crowd["id"]]
    assert records[397133].persons == [] and records[1268].crowd == []  # left out, the images kept
    assert load_split(coco_copy, "train2017") == list(records.values())  # the same records every time


def test_compressed_rle_counts_are_decoded_as_pycocotools_writes_them() -> None:
    import numpy as np
    from pycocotools import mask as mask_utils

    from pipeline.coco import annotation_problem, rle_counts

    rng = np.random.default_rng(0)
    mask = np.asfortranarray((rng.random((37, 53)) > 0.7).astype(np.uint8))
    rle = mask_utils.encode(mask)
    runs = rle_counts(rle["counts"].decode())
    assert sum(runs) == 37 * 53 and runs[0] == int(np.argmax(mask.ravel(order="F")))  # zeros before the first 1
    ann = {"bbox": [0, 0, 5, 5], "iscrowd": 1, "segmentation": {"size": [37, 53], "counts": rle["counts"].decode()}}
    assert annotation_problem(ann, 53, 37) is None
    assert "cover" in annotation_problem({**ann, "segmentation": {"size": [37, 53], "counts": "0"}}, 53, 37)
    assert "not the image's" in annotation_problem(ann, 37, 53)
    assert "malformed" in annotation_problem({**ann, "segmentation": {"size": [37, 53], "counts": "\x7f"}}, 53, 37)


def test_image_without_annotations_is_still_a_record(coco_copy: Path) -> None:
    path = coco_copy / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["images"].append({"id": 7, "file_name": "000000000007.jpg", "width": 64, "height": 48})
    path.write_text(json.dumps(data))
    records = load_split(coco_copy, "train2017")
    rec = next(r for r in records if r.image_id == 7)
    assert (rec.persons, rec.crowd, rec.captions, rec.panoptic) == ([], [], [], None)
    assert records[0].image_id == 7  # sorted by id


def test_panoptic_is_optional(coco_copy: Path) -> None:
    (coco_copy / "annotations" / "panoptic_val2017.json").unlink()
    assert all(r.panoptic is None for r in load_split(coco_copy, "val2017"))
