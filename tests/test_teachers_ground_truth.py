"""Panoptic id conversions and the ground-truth teachers (COCO panoptic PNG, COCO captions, COCO keypoints)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from shards.codecs import encode_png
from shards.taxonomy import CLASS_BY_NAME, PANOPTIC_VOID, STUFF_CLASSES, THING_CLASSES
from teachers import TeacherError, TeacherInput, create_teacher
from teachers.panoptic_ids import contiguous_from_coco_png, contiguous_from_detectron2


def _rgb_of(segment_id: int) -> list[int]:
    return [segment_id % 256, (segment_id // 256) % 256, segment_id // 65536]


def _coco_panoptic(h: int = 6, w: int = 8) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """A panoptic PNG with a person, sky, a segment of an unknown category and unlabeled pixels."""
    ids = np.zeros((h, w), np.int64)
    ids[:3, :4] = 70000  # needs all three bytes
    ids[3:, :] = 300
    ids[:3, 4:6] = 5
    segments = [{"id": 70000, "category_id": 1}, {"id": 300, "category_id": 187}, {"id": 5, "category_id": 999}]
    rgb = np.array([_rgb_of(int(i)) for i in ids.ravel()], np.uint8).reshape(h, w, 3)
    expected = np.full((h, w), PANOPTIC_VOID, np.uint8)
    expected[:3, :4] = CLASS_BY_NAME["person"].contiguous_id
    expected[3:, :] = CLASS_BY_NAME["sky-other-merged"].contiguous_id
    return rgb, segments, expected


def test_contiguous_from_coco_png_maps_ids_and_voids_unknown() -> None:
    rgb, segments, expected = _coco_panoptic()
    out = contiguous_from_coco_png(rgb, segments)
    assert out.dtype == np.uint8 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    assert expected[3, 0] == 119  # sky-other-merged is contiguous id 119 in detectron2's order


def test_contiguous_from_detectron2_separated_ids() -> None:
    seg = np.array([[0, 1, 1], [2, 2, 3], [4, 4, 4]], np.int32)
    info = [
        {"id": 1, "isthing": True, "category_id": 0},  # person
        {"id": 2, "isthing": True, "category_id": 79},  # toothbrush (last thing)
        {"id": 3, "isthing": False, "category_id": 1},  # first stuff class (index 0 = "things")
        {"id": 4, "isthing": False, "category_id": 53},  # last stuff class
    ]
    out = contiguous_from_detectron2(seg, info)
    expected = np.array([[255, 0, 0],
                         [THING_CLASSES[79].contiguous_id] * 2 + [STUFF_CLASSES[0].contiguous_id],
                         [STUFF_CLASSES[52].contiguous_id] * 3], np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert (expected[1, 2], expected[2, 0]) == (80, 132)


def test_panoptic_gt_teacher_reads_record(tmp_path) -> None:
    rgb, segments, expected = _coco_panoptic()
    path = tmp_path / "000000000001.png"
    path.write_bytes(encode_png(rgb))
    teacher = create_teacher("panoptic-gt")
    inp = TeacherInput(np.zeros((6, 8, 3), np.uint8), 1, {"panoptic": {"file": str(path), "segments_info": segments}})
    (out,) = teacher([inp])
    np.testing.assert_array_equal(out["classes"], expected)
    assert teacher.spec.needs_annotations and teacher.spec.task == "panoptic"


def test_panoptic_gt_errors_are_one_line(tmp_path) -> None:
    teacher = create_teacher("panoptic-gt")
    with pytest.raises(TeacherError, match="no panoptic annotation"):
        teacher([TeacherInput(np.zeros((6, 8, 3), np.uint8), 7, {"panoptic": None})])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(TeacherError, match="cannot read panoptic PNG"):
        teacher([TeacherInput(np.zeros((6, 8, 3), np.uint8), 7, {"panoptic": {"file": str(bad), "segments_info": []}})])
    rgb, segments, _ = _coco_panoptic()
    path = tmp_path / "ok.png"
    path.write_bytes(encode_png(rgb))
    with pytest.raises(TeacherError, match="is 8x6, the image 8x5"):
        teacher([TeacherInput(np.zeros((5, 8, 3), np.uint8), 7,
                              {"panoptic": {"file": str(path), "segments_info": segments}})])
    with pytest.raises(TeacherError, match="takes no checkpoint"):
        create_teacher("panoptic-gt", checkpoint="x")


def test_caption_gt_teacher() -> None:
    teacher = create_teacher("caption-gt", batch_size=2)
    inputs = [TeacherInput(np.zeros((4, 4, 3), np.uint8), i, {"captions": [f" A cat {i}. ", "", "A dog."]})
              for i in range(3)]
    out = teacher(inputs)
    assert out == [{"captions": [f"A cat {i}.", "A dog."]} for i in range(3)]
    assert teacher([TeacherInput(np.zeros((4, 4, 3), np.uint8), 9, {"captions": []})]) == [{"captions": []}]
    assert teacher.fingerprint() == create_teacher("caption-gt", batch_size=5).fingerprint()


def test_pose_gt_teacher_reads_persons_and_crowd_and_refuses_a_split_without_keypoints() -> None:
    teacher = create_teacher("pose-gt", batch_size=2)
    kps = [float(v) for j in range(17) for v in (10 + j, 20 + j, 2 if j % 3 else 0)]
    crowd = {"bbox": [1, 2, 3, 4], "segmentation": {"size": [4, 4], "counts": "04"}}
    record = {"keypoints_annotated": True, "persons": [{"keypoints": kps, "bbox": [5, 6, 7, 8]}], "crowd": [crowd]}
    (out,) = teacher([TeacherInput(np.zeros((40, 40, 3), np.uint8), 1, record)])
    assert set(out) == {"persons", "crowd"} and out["crowd"] == [crowd]
    (person,) = out["persons"]
    assert person["keypoints"].dtype == np.float32 and person["keypoints"].shape == (17, 3)
    np.testing.assert_array_equal(person["keypoints"].ravel(), kps)
    assert person["bbox"] == [5.0, 6.0, 7.0, 8.0] and "score" not in person  # ground truth: no scores
    nobody = {"keypoints_annotated": True, "persons": [], "crowd": []}
    assert teacher([TeacherInput(np.zeros((4, 4, 3), np.uint8), 2, nobody)]) == [{"persons": [], "crowd": []}]
    assert teacher.check_records([nobody, record]) is None  # an annotated split, people or not
    problem = teacher.check_records([{"persons": [], "crowd": []}])  # images only: no persons says nothing
    assert "no person keypoint annotations" in problem and "vitpose" in problem
    with pytest.raises(TeacherError, match="image 3 has no keypoint annotations"):
        teacher([TeacherInput(np.zeros((4, 4, 3), np.uint8), 3, {})])


@pytest.mark.parametrize("name", ["panoptic-gt", "caption-gt", "pose-gt"])
def test_ground_truth_ignores_device_and_dtype(name: str) -> None:
    """A build's --dtype float16 reaches every teacher; the readers run on any actor (one without a GPU too)
    and keep their fingerprint, so only the model teachers' columns are rebuilt."""
    plain = create_teacher(name)
    half = create_teacher(name, device="cpu", dtype="float16")
    bf16 = create_teacher(name, device="cuda", dtype="bfloat16")
    assert half.fingerprint() == plain.fingerprint() == bf16.fingerprint()
    with pytest.raises(TeacherError, match="dtype must be"):
        create_teacher(name, dtype="int8")


@pytest.mark.parametrize("name", ["depth-anything-v2", "dptext-detr", "visiongpt2", "rapidocr"])
def test_model_teachers_refuse_half_precision_on_cpu(name: str) -> None:
    with pytest.raises(TeacherError, match="dtype float16 needs a CUDA device"):  # before any weights load
        create_teacher(name, device="cpu", dtype="float16")


def test_caption_gt_takes_one_caption_given_as_a_string() -> None:
    teacher = create_teacher("caption-gt")
    img = np.zeros((4, 4, 3), np.uint8)
    assert teacher([TeacherInput(img, 1, {"captions": " a dog on a sofa "})]) == [{"captions": ["a dog on a sofa"]}]


def test_caption_gt_gives_an_image_without_captions_none_and_its_batch_goes_on() -> None:
    from pipeline.samples import caption_sample, tokens_sample
    from shards.vocab import Vocabulary

    teacher = create_teacher("caption-gt")
    img = np.zeros((4, 4, 3), np.uint8)
    preds = teacher([TeacherInput(img, 1, {"captions": ["a dog"]}), TeacherInput(img, 2, {}),
                     TeacherInput(img, 3, {"captions": ["  ", ""]})])
    assert preds == [{"captions": ["a dog"]}, {"captions": []}, {"captions": []}]
    vocab = Vocabulary(["dog"], [1], 1.0, np.ones((1, 300), np.float32))
    tokens = tokens_sample(caption_sample(preds[1], "caption-gt")["caption.json"], vocab)
    assert tokens["tokens.json"]["ids"] == [] and not tokens["glove.npy"].any()  # eight empty slots


def test_panoptic_gt_grayscale_png_and_malformed_segments(tmp_path) -> None:
    teacher = create_teacher("panoptic-gt")
    img = np.zeros((5, 8, 3), np.uint8)
    gray = tmp_path / "gray.png"
    gray.write_bytes(encode_png(np.zeros((5, 8), np.uint8)))
    with pytest.raises(TeacherError, match="is not RGB"):
        teacher([TeacherInput(img, 7, {"panoptic": {"file": str(gray), "segments_info": []}})])
    rgb = tmp_path / "rgb.png"
    rgb.write_bytes(encode_png(np.full((5, 8, 3), 1, np.uint8)))
    with pytest.raises(TeacherError, match="malformed panoptic segments_info"):
        teacher([TeacherInput(img, 7, {"panoptic": {"file": str(rgb), "segments_info": [{"id": 65793}]}})])


def test_folder_fingerprints_leave_out_hidden_files_and_notes(tmp_path) -> None:
    from teachers.base import sha256_of_path

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "merges.txt").write_text("a b")
    base = sha256_of_path(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "x.metadata").write_text("downloaded at 12:00")
    assert sha256_of_path(tmp_path) == base
    (tmp_path / "merges.txt").write_text("a c")  # a tokenizer's files are not notes
    assert sha256_of_path(tmp_path) != base
    changed = sha256_of_path(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]")
    assert sha256_of_path(tmp_path) != changed


def test_load_errors_say_what_the_file_is(tmp_path) -> None:
    from teachers.strict_load import read_checkpoint

    (tmp_path / "g.pth").write_text("garbage")
    with pytest.raises(TeacherError, match="not a PyTorch weights file, or a damaged one"):
        read_checkpoint(tmp_path / "g.pth", "visiongpt2")


@pytest.mark.parametrize("kwargs, needle", [
    ({"device": "bogus"}, "unknown device 'bogus'"), ({"device": "cuda:7"}, "CUDA GPU(s) visible here"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
])
def test_model_teacher_device_and_batch_size_are_checked(kwargs, needle, tmp_path) -> None:
    from teachers.tiny import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint("depth-anything-v2", tmp_path / "depth")
    with pytest.raises(TeacherError, match=re.escape(needle)):
        create_teacher("depth-anything-v2", checkpoint=checkpoint, **kwargs)


def test_inputs_must_be_teacher_inputs() -> None:
    with pytest.raises(TeacherError, match="must be TeacherInput"):
        create_teacher("caption-gt")([np.zeros((4, 4, 3), np.uint8)])


def test_a_cpu_teacher_checks_its_device_without_importing_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from teachers.base import _check_device; _check_device('cpu'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # a Ray actor hosting such a teacher starts without torch's import time
