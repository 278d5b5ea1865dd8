"""Detectron2 Keypoint R-CNN teacher: detectron2's own inference as pose-contract persons, its thresholds, the
model-zoo .pkl format read safely, and configs of other models refused."""

from __future__ import annotations

import filecmp
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from skimage import data

from teachers import TeacherError, TeacherInput, create_teacher
from teachers.tiny import save_tiny_checkpoint

NAME = "detectron2-keypoint-rcnn"
#: A landscape, a portrait and a second landscape of the first one's resized shape (one batch of two, one of one).
PHOTOS = [data.chelsea(), data.astronaut()[::3, ::2].copy(), data.coffee()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return save_tiny_checkpoint(NAME, tmp_path_factory.mktemp("kp") / "pth")


@pytest.fixture(scope="module")
def everything(tiny):
    """A teacher keeping every detection and joint (the tiny config's test sizes 128 / 192) and its outputs."""
    teacher = create_teacher(NAME, checkpoint=tiny, score_threshold=0.0, keypoint_threshold=0.0)
    return teacher, teacher([TeacherInput(p) for p in PHOTOS])


def test_tiny_checkpoint_is_reproducible(tiny, tmp_path) -> None:
    again = save_tiny_checkpoint(NAME, tmp_path / "again")
    other = save_tiny_checkpoint(NAME, tmp_path / "other", seed=1)
    for name in ("config.yaml", "model_final.pth"):
        assert filecmp.cmp(os.path.join(tiny, name), os.path.join(again, name), shallow=False)
    assert not filecmp.cmp(os.path.join(tiny, "model_final.pth"), os.path.join(other, "model_final.pth"),
                           shallow=False)


def test_persons_are_detectron2s_own_inference_in_original_pixels(everything) -> None:
    """Equal to the model's own forward on DefaultPredictor's input (ResizeShortestEdge of the config's test sizes,
    BGR, one image per call): boxes and scores as detectron2 gives them, joints moved by -0.5 to COCO's pixel
    indices, best first, every one inside the image."""
    from detectron2.data import transforms as T

    teacher, outs = everything
    assert (teacher.min_size, teacher.max_size) == (128, 192)
    for photo, out in zip(PHOTOS, outs):
        h, w = photo.shape[:2]
        bgr = np.ascontiguousarray(photo[:, :, ::-1])
        resized = T.ResizeShortestEdge([128, 128], 192).get_transform(bgr).apply_image(bgr)
        with torch.inference_mode():
            det = teacher.model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).astype("float32")),
                                  "height": h, "width": w}])[0]["instances"]
        assert set(out) == {"persons", "crowd"} and out["crowd"] == []
        persons = out["persons"]
        assert len(persons) == len(det) == 8  # the tiny config's TEST.DETECTIONS_PER_IMAGE
        scores = [p["score"] for p in persons]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, det.scores.numpy(), atol=1e-5)
        boxes = det.pred_boxes.tensor.numpy()
        np.testing.assert_allclose([p["bbox"] for p in persons], np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]],
                                   atol=1e-3)
        expected = det.pred_keypoints.numpy()  # (N, 17, 3) x, y, score
        for person, kps in zip(persons, expected):
            assert person["keypoints"].dtype == np.float32 and person["keypoints"].shape == (17, 3)
            np.testing.assert_allclose(person["keypoint_scores"], kps[:, 2], rtol=1e-3)  # exp of logits: 1e-4 rel
            np.testing.assert_allclose(person["keypoints"][:, :2], np.clip(kps[:, :2] - 0.5, 0, [w, h]), atol=1e-2)
            assert (person["keypoints"][:, 2] == 2).all()  # threshold 0: every joint written
            x, y, bw, bh = person["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w + 1e-3 and y + bh <= h + 1e-3
            assert ((person["keypoints"][:, :2] >= 0) & (person["keypoints"][:, :2] <= [w, h])).all()


def test_keypoint_threshold_decides_which_joints_are_written(tiny, everything) -> None:
    (full,) = everything[0]([TeacherInput(PHOTOS[0])])  # alone, as the calls below see it
    scores = np.array([p["keypoint_scores"] for p in full["persons"]])  # (8, 17)
    middle = float(np.median(scores))
    (out,) = create_teacher(NAME, checkpoint=tiny, score_threshold=0.0, keypoint_threshold=middle)([
        TeacherInput(PHOTOS[0])])
    assert len(out["persons"]) == 8
    for person, every in zip(out["persons"], full["persons"]):
        kps, seen = person["keypoints"], np.array(person["keypoint_scores"]) >= middle
        assert person["keypoint_scores"] == every["keypoint_scores"]
        np.testing.assert_array_equal(kps[:, 2], np.where(seen, 2.0, 0.0))
        np.testing.assert_array_equal(kps[seen], every["keypoints"][seen])
        assert (kps[~seen] == 0).all()
    assert 0 < sum(int((p["keypoints"][:, 2] == 2).sum()) for p in out["persons"]) < scores.size
    # detectron2's joint scores can pass 1 (the random tiny model's do): a threshold above them all writes none
    assert scores.max() > 1
    (out,) = create_teacher(NAME, checkpoint=tiny, score_threshold=0.0, keypoint_threshold=float(scores.max()) + 1)([
        TeacherInput(PHOTOS[0])])
    assert len(out["persons"]) == 8 and all((p["keypoints"] == 0).all() for p in out["persons"])


def test_score_threshold_and_max_persons(tiny, everything) -> None:
    _, outs = everything
    images = [TeacherInput(p) for p in PHOTOS]
    assert create_teacher(NAME, checkpoint=tiny, score_threshold=1.0)(images) == [{"persons": [], "crowd": []}] * 3
    middle = float(np.median([p["score"] for p in outs[0]["persons"]]))
    (out,) = create_teacher(NAME, checkpoint=tiny, score_threshold=middle, keypoint_threshold=0.0)(images[:1])
    kept = [p["score"] for p in outs[0]["persons"] if p["score"] > middle]
    assert 0 < len(kept) < 8
    np.testing.assert_allclose([p["score"] for p in out["persons"]], kept, atol=1e-5)
    (out,) = create_teacher(NAME, checkpoint=tiny, score_threshold=0.0, keypoint_threshold=0.0,
                            max_persons=3)(images[:1])
    np.testing.assert_allclose([p["score"] for p in out["persons"]], [p["score"] for p in outs[0]["persons"][:3]],
                               atol=1e-5)


def test_model_zoo_pkl_gives_the_same_persons_as_pth(tiny, everything, tmp_path) -> None:
    state = torch.load(os.path.join(tiny, "model_final.pth"), weights_only=True)["model"]
    folder = tmp_path / "pkl"
    os.makedirs(folder)
    shutil.copy(os.path.join(tiny, "config.yaml"), folder)
    with open(folder / "model_final.pkl", "wb") as f:  # detectron2's model-zoo format: numpy arrays, an author
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    teacher = create_teacher(NAME, checkpoint=str(folder), score_threshold=0.0, keypoint_threshold=0.0)
    for out, expected in zip(teacher([TeacherInput(p) for p in PHOTOS]), everything[1]):
        assert len(out["persons"]) == len(expected["persons"]) == 8
        for a, b in zip(out["persons"], expected["persons"]):
            np.testing.assert_array_equal(a.pop("keypoints"), b["keypoints"])
            assert a == {k: v for k, v in b.items() if k != "keypoints"}


@pytest.mark.parametrize("config, needle", [
    ("COCO-PanopticSegmentation/panoptic_fpn_R_101_3x.yaml", "has a PanopticFPN, KEYPOINT_ON False, 80 classes"),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "has a GeneralizedRCNN, KEYPOINT_ON False, 80 classes"),
])
def test_a_config_of_another_model_is_refused_in_one_line(tiny, config, needle) -> None:
    with pytest.raises(TeacherError) as err:
        create_teacher(NAME, checkpoint=os.path.join(tiny, "model_final.pth"), config_file=config)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"teacher {NAME!r}: config {config!r} is not a COCO person keypoint "
                                                "model") and needle in text


def test_thresholds_and_limits_change_the_fingerprint_and_the_device_does_not(tiny, everything) -> None:
    base = everything[0].fingerprint()
    kw = {"checkpoint": tiny, "score_threshold": 0.0, "keypoint_threshold": 0.0}
    assert create_teacher(NAME, **kw, device="cpu:0").fingerprint() == base
    for change in ({"score_threshold": 0.3}, {"keypoint_threshold": 0.3}, {"max_persons": 5}, {"min_size": 96},
                   {"opts": ("MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.3")}):
        assert create_teacher(NAME, **{**kw, **change}).fingerprint() != base, change


@pytest.mark.parametrize("params, needle", [
    ({"keypoint_threshold": -0.1}, "keypoint_threshold must be a number >= 0, got -0.1"),
    ({"keypoint_threshold": float("nan")}, "keypoint_threshold must be a number >= 0, got nan"),
    ({"score_threshold": 1.5}, "score_threshold must be a number in [0, 1], got 1.5"),
    ({"max_persons": 0}, "max_persons must be an integer >= 1, got 0"),
])
def test_impossible_parameters_are_refused(tiny, params, needle) -> None:
    with pytest.raises(TeacherError, match=re.escape(needle)):
        create_teacher(NAME, checkpoint=tiny, **params)
