"""Every model teacher built tiny with random weights, saved in its real format and loaded back through the
real loading path, run on a batch of differently sized real photos (scikit-image's bundled ones)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from skimage import data

from teachers import TeacherError, TeacherInput, create_teacher, list_teachers
from teachers.tiny import save_tiny_checkpoint

#: The model teachers of this package with the small input sizes used here (the defaults are full size).
CASES: dict[str, dict] = {
    "depth-anything-v2": {"input_size": 126},
    "detectron2-panoptic-fpn": {"min_size": 64, "max_size": 96},
    # threshold 0 keeps every query, so random weights still exercise the panoptic merge
    "mask2former": {"min_size": 64, "max_size": 128, "score_threshold": 0.0},
    "vit-gpt2": {"num_beams": 2, "max_length": 8},
    "rapidocr": {"input_size": 128},
    # thresholds 0 keep every random detection and joint, so the mapping of boxes and joints is exercised
    "vitpose": {"score_threshold": 0.0, "keypoint_threshold": 0.0},
    "detectron2-keypoint-rcnn": {"min_size": 64, "max_size": 96, "score_threshold": 0.0, "keypoint_threshold": 0.0},
}
CASES = {name: kw for name, kw in CASES.items() if name in list_teachers()}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Four real photos of different sizes and aspect ratios, downscaled 3x to keep the suite fast."""
    return [im[::3, ::3].copy() for im in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: save_tiny_checkpoint(name, root / name.replace("-", "_")) for name in CASES}


@pytest.fixture(scope="module")
def teachers(checkpoints) -> dict:
    return {name: create_teacher(name, checkpoint=checkpoints[name], batch_size=4, **kw)
            for name, kw in CASES.items()}


@pytest.fixture(scope="module")
def batched(teachers, images) -> dict[str, list[dict]]:
    """Each teacher's outputs for the whole image list in one call (computed once, used by several tests)."""
    return {name: t([TeacherInput(im, i) for i, im in enumerate(images)]) for name, t in teachers.items()}


def _check_output(name: str, spec_task: str, out: dict, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    if spec_task == "depth":
        assert set(out) == {"depth", "kind"} and out["kind"] in ("relative", "metric")
        assert out["depth"].dtype == np.float32 and out["depth"].shape == (h, w)
        assert np.isfinite(out["depth"]).all() and out["depth"].min() >= 0
    elif spec_task == "panoptic":
        assert set(out) == {"classes"}
        assert out["classes"].dtype == np.uint8 and out["classes"].shape == (h, w)
        values = np.unique(out["classes"])
        assert ((values <= 132) | (values == 255)).all()
    elif spec_task == "text":
        assert set(out) == {"polygons", "scores"} and len(out["polygons"]) == len(out["scores"])
        for poly, score in zip(out["polygons"], out["scores"]):
            assert poly.dtype == np.float32 and poly.ndim == 2 and poly.shape[1] == 2
            assert (poly >= 0).all() and (poly[:, 0] <= w).all() and (poly[:, 1] <= h).all()
            assert 0.0 <= score <= 1.0
    elif spec_task == "caption":
        assert set(out) == {"captions"} and out["captions"]
        assert all(isinstance(c, str) for c in out["captions"])
    elif spec_task == "pose":
        assert set(out) == {"persons", "crowd"} and out["crowd"] == []
        for person in out["persons"]:
            assert {"keypoints", "bbox", "score", "keypoint_scores"} <= set(person)
            kps = person["keypoints"]
            assert kps.dtype == np.float32 and kps.shape == (17, 3) and np.isfinite(kps).all()
            assert set(np.unique(kps[:, 2])) <= {0.0, 2.0}
            assert (kps[kps[:, 2] == 0, :2] == 0).all()
            seen = kps[kps[:, 2] > 0]
            assert ((seen[:, 0] >= 0) & (seen[:, 0] <= w) & (seen[:, 1] >= 0) & (seen[:, 1] <= h)).all()
            x, y, bw, bh = person["bbox"]
            assert bw >= 0 and bh >= 0 and x >= 0 and y >= 0 and x + bw <= w + 1e-3 and y + bh <= h + 1e-3
            assert 0.0 <= person["score"] <= 1.0 and len(person["keypoint_scores"]) == 17
            assert all(np.isfinite(person["keypoint_scores"]))
    else:  # pragma: no cover - a new task needs its checks here
        raise AssertionError(f"{name}: no output checks for task {spec_task}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_batch_outputs_follow_the_contract(name, teachers, batched, images) -> None:
    outs = batched[name]
    assert len(outs) == len(images)
    for out, image in zip(outs, images):
        _check_output(name, teachers[name].spec.task, out, image)


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_equals_one_by_one(name, teachers, batched, images) -> None:
    single = [teachers[name]([TeacherInput(im, i)])[0] for i, im in enumerate(images)]
    for b, s in zip(batched[name], single):
        assert set(b) == set(s)
        for key in b:
            if isinstance(b[key], np.ndarray) and b[key].dtype.kind == "f":
                np.testing.assert_allclose(b[key], s[key], rtol=1e-4, atol=1e-5 * max(1e-12, np.abs(s[key]).max()))
            elif isinstance(b[key], np.ndarray):
                assert (b[key] != s[key]).mean() < 1e-3, f"{name}: {key} differs batched vs one by one"
            elif key == "polygons":
                assert len(b[key]) == len(s[key])
                for pb, ps in zip(b[key], s[key]):
                    np.testing.assert_allclose(pb, ps, atol=1e-3)
            elif key == "scores":
                np.testing.assert_allclose(b[key], s[key], atol=1e-5)
            elif key == "persons":
                assert len(b[key]) == len(s[key])
                for pb, ps in zip(b[key], s[key]):
                    np.testing.assert_allclose(pb["keypoints"], ps["keypoints"], atol=1e-2)
                    np.testing.assert_allclose(pb["bbox"], ps["bbox"], atol=1e-2)
                    np.testing.assert_allclose(pb["score"], ps["score"], atol=1e-4)
            else:
                assert b[key] == s[key]


@pytest.mark.parametrize("name", sorted(CASES))
def test_fingerprint_follows_parameters_and_weights(name, checkpoints, teachers, tmp_path) -> None:
    teacher = teachers[name]
    assert teacher.fingerprint() == create_teacher(name, checkpoint=checkpoints[name], batch_size=1,
                                                   **CASES[name]).fingerprint()
    other_weights = save_tiny_checkpoint(name, tmp_path / "other", seed=1)
    assert create_teacher(name, checkpoint=other_weights, **CASES[name]).fingerprint() != teacher.fingerprint()
    changed = {k: v * 2 if isinstance(v, int) else v for k, v in CASES[name].items()}
    if changed != CASES[name]:
        assert create_teacher(name, checkpoint=checkpoints[name], **changed).fingerprint() != teacher.fingerprint()


def _truncate(path: str) -> None:
    """Cut every weights file under ``path`` (a file or a folder) to half its size."""
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                                                 if f.endswith((".safetensors", ".pth", ".pkl", ".onnx", ".bin"))]
    assert files, f"no weights file under {path}"
    for f in files:
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:
            fh.truncate(size // 2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_wrong_or_truncated_checkpoint_is_one_clear_error(name, tmp_path) -> None:
    ckpt = save_tiny_checkpoint(name, tmp_path / "cut")
    _truncate(ckpt)
    with pytest.raises(TeacherError) as err:
        create_teacher(name, checkpoint=ckpt, **CASES[name])
    assert name in str(err.value) and "\n" not in str(err.value)
    wrong = tmp_path / ("wrong.pth" if os.path.isfile(ckpt) else "wrong")
    if os.path.isfile(ckpt):
        wrong.write_bytes(b"this is not a checkpoint")
    else:
        wrong.mkdir()
        (wrong / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(TeacherError) as err:
        create_teacher(name, checkpoint=str(wrong), **CASES[name])
    assert "\n" not in str(err.value)


def test_every_registered_model_teacher_of_this_package_is_covered() -> None:
    import importlib

    from teachers.registry import teacher_module

    ports = {"dptext-detr", "visiongpt2"}  # research-model ports, tested in their own files
    models = {n for n in list_teachers()
              if hasattr(importlib.import_module(teacher_module(n)), "save_tiny_checkpoint")} - ports
    assert models == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_image_is_one_clear_error(name, teachers) -> None:
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8)):
        with pytest.raises(TeacherError, match=r"\(H, W, 3\) uint8"):
            teachers[name]([TeacherInput(bad)])


@pytest.mark.parametrize(("name", "other"), [("depth-anything-v2", "mask2former"), ("mask2former", "vit-gpt2"),
                                             ("vit-gpt2", "depth-anything-v2")])
def test_checkpoint_of_another_architecture_is_refused(name, other, checkpoints) -> None:
    # transformers alone would load it with random weights and a warning
    with pytest.raises(TeacherError, match="not 'depth_anything'|not 'mask2former'|not 'vision-encoder-decoder'"):
        create_teacher(name, checkpoint=checkpoints[other], **CASES[name])


def test_mask2former_with_its_classes_in_another_order_is_refused(checkpoints, tmp_path) -> None:
    import json
    import shutil

    folder = tmp_path / "m2f"
    shutil.copytree(checkpoints["mask2former"], folder)
    config = json.loads((folder / "config.json").read_text())
    names = config["id2label"]
    assert names["0"] == "person" and names["132"] == "rug-merged"  # the tiny model has the real names
    config["id2label"] = {k: v.upper().replace("-", " ") for k, v in names.items()}  # spelling: accepted
    (folder / "config.json").write_text(json.dumps(config))
    create_teacher("mask2former", checkpoint=str(folder), **CASES["mask2former"])
    config["id2label"] = {str(i): names[str((i + 1) % 133)] for i in range(133)}  # shifted by one class
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match=r"names its classes otherwise than the COCO panoptic order .* \(133 of 133 "
                                           r"differ; class 0 is 'bicycle', not 'person'"):
        create_teacher("mask2former", checkpoint=str(folder), **CASES["mask2former"])


def test_mask2former_merge_leaves_pixels_outside_the_winning_mask_void() -> None:
    import torch

    from shards.taxonomy import PANOPTIC_VOID
    from teachers.mask2former import Mask2FormerTeacher

    merge = Mask2FormerTeacher.__new__(Mask2FormerTeacher)  # the merge alone, without a model
    merge.overlap_threshold = 0.8
    probs = torch.tensor([[[0.9, 0.9, 0.3, 0.1]], [[0.1, 0.1, 0.2, 0.1]]])  # (Q=2, H=1, W=4)
    classes = merge._merge(probs, torch.tensor([1.0, 1.0]), torch.tensor([5, 7]))
    # query 0 wins every pixel; only the two inside its own mask (p >= 0.5) take its class
    assert classes.tolist() == [[5, 5, PANOPTIC_VOID, PANOPTIC_VOID]]
    probs = torch.tensor([[[0.9, 0.9, 0.9, 0.1]], [[0.2, 0.2, 0.95, 0.6]]])
    classes = merge._merge(probs, torch.tensor([1.0, 1.0]), torch.tensor([5, 7]))
    # query 0 keeps 2 of its 3 mask pixels (< 0.8): dropped, void; query 1 wins its whole mask
    assert classes.tolist() == [[PANOPTIC_VOID, PANOPTIC_VOID, 7, 7]]


@pytest.mark.parametrize("name, params, needle", [
    ("mask2former", {"score_threshold": float("nan")}, "score_threshold must be a number in [0, 1]"),
    ("mask2former", {"overlap_threshold": 1.5}, "overlap_threshold must be a number in [0, 1]"),
])
def test_impossible_thresholds_are_refused(name, params, needle, checkpoints) -> None:
    with pytest.raises(TeacherError, match=re.escape(needle)):
        create_teacher(name, checkpoint=checkpoints[name], **params)


@pytest.mark.parametrize("name, params, needle", [
    ("depth-anything-v2", {"input_size": 700.5}, "input_size must be an integer >= 14, got 700.5"),
    ("mask2former", {"min_size": "big"}, "min_size must be an integer >= 32, got 'big'"),
    ("mask2former", {"min_size": 800, "max_size": 640}, "max_size 640 is below min_size 800"),
    ("vit-gpt2", {"max_length": 10**6}, "max_length must be at most 64 (the decoder's positions)"),
    ("vit-gpt2", {"num_beams": 0}, "num_beams must be an integer >= 1, got 0"),
])
def test_impossible_sizes_are_refused(name, params, needle, checkpoints) -> None:
    with pytest.raises(TeacherError, match=re.escape(needle)):
        create_teacher(name, checkpoint=checkpoints[name], **params)


@pytest.mark.parametrize("hw, resized", [((300, 450), (64, 96)), ((400, 200), (128, 64)), ((90, 300), (38, 128))])
def test_mask2former_runs_at_its_own_test_geometry(checkpoints, hw, resized) -> None:
    """Mask2Former's test resize (shorter side to min_size, longer at most max_size, PIL bilinear), normalised and
    zero-padded bottom-right to a multiple of 32: a 3:2 photo and a 1:2 portrait as a 4:3 one."""
    from PIL import Image

    from teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, shortest_edge_shape

    assert shortest_edge_shape(427, 640, 800, 1333) == (800, 1199)  # a COCO photo at Mask2Former's test size
    assert shortest_edge_shape(1000, 500, 800, 1333) == (1333, 667)  # a 1:2 portrait: the long side caps it
    teacher = create_teacher("mask2former", checkpoint=checkpoints["mask2former"], **CASES["mask2former"])
    seen = []
    teacher.model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["pixel_values"].clone()),
                                            with_kwargs=True)
    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    (out,) = teacher([TeacherInput(image)])
    assert out["classes"].shape == hw
    h, w = resized
    expected = np.zeros((-(-h // 32) * 32, -(-w // 32) * 32, 3), np.float32)
    pil = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float32)
    expected[:h, :w] = (pil - np.array(IMAGENET_MEAN) * 255) / (np.array(IMAGENET_STD) * 255)
    np.testing.assert_allclose(seen[0][0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
