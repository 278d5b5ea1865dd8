"""The pose stage: COCO keypoints (pose-gt) or a model teacher (tiny random ViTPose and Keypoint R-CNN) write the pose
column; changing the pose teacher reruns pose only; the student's loader renders the active pose column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pipeline_fakes
from pipeline.build import build_targets
from pipeline.coco import load_split
from pipeline_store_checks import tar_files
from shards.manifest import load_manifest
from shards.pose import pose_problem
from shards.reader import StoreReader
from shards.taxonomy import JOINTS
from shards.verify import verify_split


def _poses(out: Path, split: str) -> dict[str, dict]:
    return {s["__key__"]: s["pose.json"] for s in StoreReader(out, split, ["pose"])}


def _first_batch(out: Path) -> dict:
    from student.data import open_split

    return next(iter(open_split(out, "train2017", train=False, batch_size=4)))


def test_changing_the_pose_teacher_reruns_pose_only_and_the_loader_follows_it(demo_root: Path, tmp_path: Path,
                                                                               fakes) -> None:
    out = tmp_path / "store"
    first = build_targets(pipeline_fakes.make_config(demo_root, out, pose_teacher="pose-gt"))
    assert first["ok"]
    poses = _poses(out, "train2017")
    records = {f"{r.image_id:012d}": r for r in load_split(demo_root, "train2017")}
    for key, pose in poses.items():  # every annotated person and crowd region, as annotated
        assert pose["source"] == "pose-gt" and pose_problem(pose) is None
        assert len(pose["persons"]) == len(records[key].persons) and len(pose["crowd"]) == len(records[key].crowd)
    assert sum(len(p["persons"]) for p in poses.values()) >= 3
    before, batch_gt = tar_files(out / "train2017"), _first_batch(out)
    gt_fp = load_manifest(out / "train2017").columns["pose"]

    second = build_targets(pipeline_fakes.make_config(demo_root, out, pose_teacher="fake-pose"))
    assert second["ok"]
    assert {s for s, st in second["stages"].items() if st["run"]} == {"pose"}
    assert second["stages"]["pose"]["run"] == second["stages"]["pose"]["units"]
    after = tar_files(out / "train2017")
    assert {k: v for k, v in after.items() if not k.startswith("pose/")} == \
        {k: v for k, v in before.items() if not k.startswith("pose/")}  # no other column written again
    model_fp = load_manifest(out / "train2017").columns["pose"]
    assert model_fp != gt_fp and any(k.startswith(f"pose/{gt_fp}/") for k in after)  # the old version stays
    assert not verify_split(out, "train2017").faults
    poses = _poses(out, "train2017")
    assert all(p["source"] == "fake-pose" and len(p["persons"]) == 1 and p["crowd"] == [] for p in poses.values())

    batch = _first_batch(out)
    assert batch["key"] == batch_gt["key"]
    assert not np.array_equal(batch["pose"].numpy(), batch_gt["pose"].numpy())
    for i, key in enumerate(batch["key"]):  # each joint the fake teacher saw peaks where it put it
        kps = np.asarray(poses[key]["persons"][0]["keypoints"], np.float32)
        for j in range(len(JOINTS)):
            heat = batch["pose"][i, j].numpy()
            if kps[j, 2] == 0:
                assert heat.max() == -127, (key, j)  # nobody's joint j: background everywhere
                continue
            y, x = np.unravel_index(np.argmax(heat), heat.shape)
            assert abs(x - kps[j, 0]) <= 1.5 and abs(y - kps[j, 1]) <= 1.5, (key, JOINTS[j], (x, y), kps[j])


# random weights score below the default 0.5 on the demo's photos: keep every box
@pytest.mark.parametrize("teacher", ["vitpose", "detectron2-keypoint-rcnn"])
def test_a_model_pose_teacher_builds_a_folder_split_that_verifies(teacher: str, demo_root: Path,
                                                                   tmp_path: Path, fakes) -> None:
    from pipeline.samples import decode_image
    from shards.geometry import Letterbox
    from teachers import TeacherInput, create_teacher
    from teachers.tiny import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(teacher, tmp_path / "ckpt")
    out = tmp_path / "store"
    cfg = pipeline_fakes.make_config(demo_root, out, images=str(demo_root / "val2017"), split="photos",
                                     vocab_split="photos", pose_teacher=teacher, pose_checkpoint=checkpoint,
                                     pose_params={"score_threshold": 0.0})
    report = build_targets(cfg)
    assert report["ok"], report["failures"]
    assert not verify_split(out, "photos").faults
    samples = list(StoreReader(out, "photos", ["base", "pose"]))
    assert all(s["pose.json"]["source"] == teacher and s["pose.json"]["crowd"] == [] for s in samples)
    assert sum(len(s["pose.json"]["persons"]) for s in samples) >= 3, "the mapping went untested"
    model = create_teacher(teacher, checkpoint=checkpoint, score_threshold=0.0)
    for s in samples:  # each person as the teacher gives it alone, mapped into the letterbox
        meta = s["meta.json"]
        (pred,) = model([TeacherInput(decode_image(demo_root / "val2017" / meta["file_name"]), meta["id"])])
        box = Letterbox.from_meta(meta)
        x0, y0 = meta["offset"]
        w, h = meta["resized"]
        assert len(s["pose.json"]["persons"]) == len(pred["persons"])
        for stored, raw in zip(s["pose.json"]["persons"], pred["persons"]):
            kps = np.asarray(stored["keypoints"], np.float32)
            np.testing.assert_array_equal(kps[:, 2], raw["keypoints"][:, 2])
            seen = kps[:, 2] > 0
            expected = box.to_store(raw["keypoints"][seen, :2] + 0.5)  # pixel index -> continuous store pixels
            np.testing.assert_allclose(kps[seen, :2], expected, atol=0.02)
            assert ((kps[seen, 0] >= x0) & (kps[seen, 0] <= x0 + w) & (kps[seen, 1] >= y0)
                    & (kps[seen, 1] <= y0 + h)).all()  # on the picture, not in the letterbox's border
            np.testing.assert_allclose(stored["bbox"], box.bbox_to_store(raw["bbox"]), atol=0.02)
            assert stored["score"] == pytest.approx(raw["score"], abs=1e-4)
            np.testing.assert_allclose(stored["keypoint_scores"], raw["keypoint_scores"], rtol=1e-3, atol=1e-4)


def test_an_image_the_pose_teacher_refuses_is_ignored_by_the_pose_loss(demo_root: Path, tmp_path: Path,
                                                                       fakes) -> None:
    from student.targets import crowd_mask

    out = tmp_path / "store"
    report = build_targets(pipeline_fakes.make_config(demo_root, out, pose_params={"refuse": 1000}))
    assert report["ok"] and {"id": 1000, "stage": "pose"}.items() <= report["emptied_targets"][0].items()
    (sample,) = [s for s in StoreReader(out, "train2017", ["base", "pose"]) if s["__key__"] == "000000001000"]
    pose, meta = sample["pose.json"], sample["meta.json"]
    assert pose["persons"] == [] and len(pose["crowd"]) == 1 and pose_problem(pose) is None
    x0, y0 = meta["offset"]
    w, h = meta["resized"]
    crowd = crowd_mask(pose, meta["size"])  # what the loader leaves out of the pose loss
    assert crowd[y0:y0 + h, x0:x0 + w].all()  # the whole picture
