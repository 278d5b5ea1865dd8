"""ViTPose specifics: the tiny bundle, the pose output contract, thresholds, the detector's person class, and the
box -> crop -> heatmap -> image mapping checked against transformers' own VitPose image processor."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from skimage import data

from teachers import TeacherError, TeacherInput, create_teacher
from teachers.base import sha256_of_path
from teachers.vitpose import save_tiny_checkpoint

KEEP_ALL = {"score_threshold": 0.0, "keypoint_threshold": 0.0}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("vitpose") / "tiny"))


@pytest.fixture(scope="module")
def teacher(bundle):
    return create_teacher("vitpose", checkpoint=bundle, **KEEP_ALL)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()[::3, ::3].copy()  # (171, 171, 3)


def test_tiny_bundle_is_reproducible_and_loads(bundle, teacher, tmp_path) -> None:
    for part in ("pose", "detector"):
        for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
            assert os.path.isfile(f"{bundle}/{part}/{name}"), f"{part}/{name}"
    again = save_tiny_checkpoint(str(tmp_path / "again"))
    assert sha256_of_path(again) == sha256_of_path(bundle)
    assert teacher.pose_checkpoint == f"{bundle}/pose" and teacher.detector == f"{bundle}/detector"
    assert teacher.person == 0 and teacher.crop == (256, 192)


def test_output_follows_the_pose_contract(teacher, astronaut) -> None:
    frozen = astronaut.copy()
    frozen.flags.writeable = False  # as Ray's object store hands images over
    (out,) = teacher([TeacherInput(frozen, 7)])
    h, w = astronaut.shape[:2]
    assert set(out) == {"persons", "crowd"} and out["crowd"] == []
    persons = out["persons"]
    assert 0 < len(persons) <= 20
    scores = [p["score"] for p in persons]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    for p in persons:
        assert set(p) == {"keypoints", "bbox", "score", "keypoint_scores"}
        kps = p["keypoints"]
        assert kps.dtype == np.float32 and kps.shape == (17, 3) and set(np.unique(kps[:, 2])) <= {0.0, 2.0}
        seen = kps[:, 2] == 2
        assert seen.any() and (kps[~seen, :2] == 0).all()
        assert (kps[seen, 0] >= 0).all() and (kps[seen, 0] <= w - 1).all()
        assert (kps[seen, 1] >= 0).all() and (kps[seen, 1] <= h - 1).all()
        x, y, bw, bh = p["bbox"]
        assert all(isinstance(v, float) for v in p["bbox"]) and isinstance(p["score"], float)
        assert x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= w + 1e-3 and y + bh <= h + 1e-3
        assert len(p["keypoint_scores"]) == 17 and all(isinstance(s, float) for s in p["keypoint_scores"])
        # v = 2 only where the joint's heatmap maximum reaches the threshold (0 here) and is positive (and the
        # joint lies on the image: one past the frame is not there)
        assert (seen <= (np.array(p["keypoint_scores"]) > 0)).all()


def test_max_persons_keeps_the_best_scores(bundle, teacher, astronaut) -> None:
    (every,) = teacher([TeacherInput(astronaut)])
    (three,) = create_teacher("vitpose", checkpoint=bundle, max_persons=3, **KEEP_ALL)([TeacherInput(astronaut)])
    assert len(every["persons"]) > 3 and len(three["persons"]) == 3
    for a, b in zip(every["persons"][:3], three["persons"]):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-4)
        assert a["bbox"] == pytest.approx(b["bbox"]) and a["score"] == pytest.approx(b["score"])


def test_keypoint_threshold_one_hides_every_joint(bundle, astronaut) -> None:
    (out,) = create_teacher("vitpose", checkpoint=bundle, score_threshold=0.0,
                            keypoint_threshold=1.0)([TeacherInput(astronaut)])
    assert out["persons"]
    for p in out["persons"]:
        assert max(p["keypoint_scores"]) < 1.0  # the tiny model's heatmaps stay below 1
        assert (p["keypoints"] == 0).all()


def test_score_threshold_one_finds_nobody(bundle, astronaut) -> None:
    (out,) = create_teacher("vitpose", checkpoint=bundle, score_threshold=1.0)([TeacherInput(astronaut)])
    assert out == {"persons": [], "crowd": []}


def test_fingerprint_follows_thresholds_and_both_models(bundle, teacher, tmp_path) -> None:
    base = teacher.fingerprint()
    assert create_teacher("vitpose", checkpoint=bundle, batch_size=1, **KEEP_ALL).fingerprint() == base
    for change in ({"score_threshold": 0.1}, {"keypoint_threshold": 0.2}, {"max_persons": 5}):
        assert create_teacher("vitpose", checkpoint=bundle, **{**KEEP_ALL, **change}).fingerprint() != base
    other = save_tiny_checkpoint(str(tmp_path / "other"), seed=1)
    other_detector = create_teacher("vitpose", checkpoint=bundle, detector=f"{other}/detector", **KEEP_ALL)
    assert other_detector.detector == f"{other}/detector"  # an explicit detector wins over the bundle's
    other_pose = create_teacher("vitpose", checkpoint=f"{other}/pose", detector=f"{bundle}/detector", **KEEP_ALL)
    assert len({base, other_detector.fingerprint(), other_pose.fingerprint()}) == 3


def test_detector_without_a_person_class_is_one_clear_error(bundle, tmp_path) -> None:
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    path = folder / "detector" / "config.json"
    config = json.loads(path.read_text())
    config["id2label"]["0"] = "pedestrian"
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    path.write_text(json.dumps(config))
    with pytest.raises(TeacherError, match=r"teacher 'vitpose': detector .* has no class named 'person' \(its "
                                           r"classes: pedestrian, bicycle, car"):
        create_teacher("vitpose", checkpoint=str(folder))
    with pytest.raises(TeacherError) as err:
        create_teacher("vitpose", checkpoint=str(folder))
    assert "\n" not in str(err.value)


def test_bundle_without_detector_is_one_clear_error(bundle, tmp_path) -> None:
    folder = tmp_path / "bundle"
    shutil.copytree(f"{bundle}/pose", folder / "pose")
    with pytest.raises(TeacherError, match=r"^teacher 'vitpose': bundle .* has no detector/ folder; add it or pass "
                                           r"detector=$"):
        create_teacher("vitpose", checkpoint=str(folder))
    # with an explicit detector the bundle's pose model serves alone
    teacher = create_teacher("vitpose", checkpoint=str(folder), detector=f"{bundle}/detector")
    assert teacher.pose_checkpoint == str(folder / "pose")


@pytest.mark.parametrize("params, needle", [
    ({"score_threshold": 1.5}, "score_threshold must be a number in [0, 1], got 1.5"),
    ({"keypoint_threshold": float("nan")}, "keypoint_threshold must be a number in [0, 1]"),
    ({"max_persons": 0}, "max_persons must be an integer >= 1, got 0"),
])
def test_impossible_parameters_are_refused_before_loading(params, needle) -> None:
    with pytest.raises(TeacherError) as err:
        create_teacher("vitpose", checkpoint="/no/such/bundle", **params)
    assert needle in str(err.value)


BOXES = np.array([[10.3, 20.7, 60.2, 120.9], [100.5, 3.2, 70.0, 30.0], [0.0, 0.0, 171.0, 171.0],
                  [150.2, 140.1, 20.8, 30.8]], np.float32)  # [x, y, w, h]; some crops reach past the image


def test_crops_are_the_image_processors_warp(teacher, astronaut) -> None:
    """The crops are VitPoseImageProcessor's own (center/scale with 1.25 padding, its warp matrix, bilinear, zero
    outside), before it rounds them to uint8."""
    from transformers import VitPoseImageProcessor

    raw = VitPoseImageProcessor(do_rescale=False, do_normalize=False)
    ref = raw(images=[astronaut], boxes=[BOXES], return_tensors="pt",
              input_data_format="channels_last")["pixel_values"].float().numpy()  # (4, 3, 256, 192) uint8 levels
    crops = teacher._crops(astronaut, BOXES).numpy()
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    levels = (crops * std + mean) * 255
    assert crops.shape == ref.shape == (4, 3, 256, 192)
    assert np.abs(levels - ref).max() <= 0.52  # its rounding, and float32 geometry
    assert (np.round(levels) == ref).mean() > 0.9999  # all but float ties at .5
    assert (ref[3, :, -1] == 0).all() and np.abs(levels[3, :, -1]).max() < 1e-3  # past the corner: zeros


def test_heatmap_peaks_map_back_to_original_pixels(teacher, astronaut, monkeypatch) -> None:
    """Gaussian heatmap peaks at known sub-cell places come back where transformers' post_process_pose_estimation
    puts them and where the box's geometry says: x = cx - sw / 2 + col * sw / 47 (and so for y)."""
    import torch
    from transformers import VitPoseImageProcessor
    from transformers.models.vitpose.image_processing_vitpose import box_to_center_and_scale

    boxes = BOXES[[0, 2]]  # the second (the whole image) reaches past it once padded: joints there are not there
    rng = np.random.default_rng(0)
    peaks = np.stack([rng.uniform(5, 42, (2, 17)), rng.uniform(5, 58, (2, 17))], -1)  # (2, 17, 2) col, row
    dx = np.arange(48)[None, None, None, :] - peaks[..., 0, None, None]  # (2, 17, 1, 48)
    dy = np.arange(64)[None, None, :, None] - peaks[..., 1, None, None]  # (2, 17, 64, 1)
    heatmaps = torch.from_numpy(0.9 * np.exp(-(dx ** 2 + dy ** 2) / (2 * 2.0 ** 2))).float()  # (2, 17, 64, 48)
    seen = []

    def fake_model(pixel_values, **kw):
        seen.append(tuple(pixel_values.shape))
        return SimpleNamespace(heatmaps=heatmaps[:len(pixel_values)])

    monkeypatch.setattr(teacher, "_detect", lambda images: [(boxes, np.array([0.9, 0.8], np.float32))])
    monkeypatch.setattr(teacher, "model", fake_model)
    (out,) = teacher([TeacherInput(astronaut)])
    assert seen == [(2, 3, 256, 192)] and len(out["persons"]) == 2
    theirs = VitPoseImageProcessor().post_process_pose_estimation(SimpleNamespace(heatmaps=heatmaps), boxes=[boxes])[0]
    for person, box, peak, their in zip(out["persons"], boxes, peaks, theirs):
        center, scale = box_to_center_and_scale(box, image_width=192, image_height=256)
        size = scale * 200
        expected = center - size / 2 + peak * size / [47, 63]
        assert person["bbox"] == pytest.approx(box.tolist())
        xy = their["keypoints"].numpy()
        on_image = ((xy >= -0.5) & (xy <= 170.5)).all(1)  # the 171-pixel photo spans -0.5 .. 170.5
        assert on_image.sum() >= 10 and not on_image.all()
        np.testing.assert_array_equal(person["keypoints"][:, 2], 2 * on_image)
        np.testing.assert_allclose(person["keypoints"][on_image, :2], np.clip(xy[on_image], 0, 170), atol=1e-4)
        inside = (expected >= 0).all(1) & (expected <= 170).all(1)
        assert inside.sum() >= 10
        np.testing.assert_allclose(person["keypoints"][inside, :2], expected[inside], atol=0.02 * size.max() / 47)
        np.testing.assert_allclose(person["keypoint_scores"], their["scores"].numpy(), atol=1e-6)


def test_a_pose_model_of_another_joint_order_is_refused(bundle, tmp_path) -> None:
    from shards.taxonomy import JOINTS

    folder = tmp_path / "other"
    shutil.copytree(bundle, folder)
    config_path = folder / "pose" / "config.json"
    config = json.loads(config_path.read_text())
    assert [config["id2label"][str(j)] for j in range(17)] == list(JOINTS)  # the tiny model names COCO's joints
    hf_style = ["Nose"] + [f"{side}_{part}" for part in ("Eye", "Ear", "Shoulder", "Elbow", "Wrist", "Hip", "Knee",
                                                          "Ankle") for side in "LR"]
    config["id2label"] = {str(j): n for j, n in enumerate(hf_style)}  # spelling: accepted
    config_path.write_text(json.dumps(config))
    create_teacher("vitpose", checkpoint=str(folder))
    config["id2label"] = {str(j): n for j, n in enumerate(hf_style[:5] + hf_style[6:7] + hf_style[5:6] + hf_style[7:])}
    config_path.write_text(json.dumps(config))  # shoulders swapped: the store's channels would be mislabelled
    with pytest.raises(TeacherError, match=r"names its joints otherwise than COCO's order \(2 of 17 differ; joint 5 "
                                           r"is 'R_Shoulder', not 'left_shoulder'\)"):
        create_teacher("vitpose", checkpoint=str(folder))
