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


def test_bad_keypoint_count_names_the_file(coco_copy: Path) -> None:
    path = coco_copy / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["keypoints"] = [1, 2, 2]
    path.write_text(json.dumps(data))
    with pytest.raises(CocoError, match="person_keypoints_train2017.json.*3 keypoint values"):
        load_split(coco_copy, "train2017")


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
