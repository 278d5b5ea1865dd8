"""RapidOCR on real text with the detection model shipped in the package, and missing-extra errors."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from skimage import data

from teachers import MissingExtraError, TeacherError, TeacherInput, create_teacher


@pytest.fixture(scope="module")
def ocr():
    return create_teacher("rapidocr", input_size=640, batch_size=3)


def _mask(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for p in polygons:
        cv2.fillPoly(m, [np.round(p).astype(np.int32)], 1)
    return m.astype(bool)


def test_finds_rendered_text(ocr) -> None:
    img = np.full((200, 520, 3), 255, np.uint8)
    (w, h), base = cv2.getTextSize("HELLO WORLD", cv2.FONT_HERSHEY_SIMPLEX, 2.0, 5)
    cv2.putText(img, "HELLO WORLD", (40, 120), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (0, 0, 0), 5)
    drawn = np.zeros(img.shape[:2], bool)
    drawn[120 - h:120 + base, 40:40 + w] = True
    (out,) = ocr([TeacherInput(img)])
    assert out["polygons"] and all(p.dtype == np.float32 and p.shape == (4, 2) for p in out["polygons"])
    found = _mask(img.shape[:2], out["polygons"])
    iou = (found & drawn).sum() / (found | drawn).sum()
    assert iou >= 0.5, f"IoU {iou:.2f} with the drawn text box"
    assert max(out["scores"]) > 0.7


def test_finds_text_in_the_scikit_image_text_photo(ocr) -> None:
    gray = data.text()  # handwritten formulas on slanted ruled paper, 172 x 448
    (out,) = ocr([TeacherInput(np.stack([gray] * 3, -1))])
    assert out["polygons"] and max(out["scores"]) >= 0.5
    found = _mask(gray.shape, out["polygons"])
    # dark strokes (ink) against the local paper brightness
    ink = gray.astype(np.float32) < cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 8) - 25
    assert 0.05 <= found.mean() <= 0.6, "a text region, not a speck nor the whole page"
    assert ink[found].mean() >= 1.1 * ink[~found].mean(), "the region is where the ink is"


def test_text_of_a_batch_is_found_per_image(ocr) -> None:
    photo = data.astronaut()[::2, ::2].copy()  # no text in it
    img = np.full((160, 420, 3), 255, np.uint8)
    cv2.putText(img, "COCO 2017", (20, 100), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (0, 0, 0), 5)
    outs = ocr([TeacherInput(photo), TeacherInput(img), TeacherInput(photo)])
    assert [len(o["polygons"]) > 0 for o in outs] == [False, True, False]


@pytest.mark.parametrize(("name", "module", "extra"), [
    ("rapidocr", "onnxruntime", "ocr"),
    ("rapidocr", "rapidocr", "ocr"),
    ("detectron2-panoptic-fpn", "detectron2", "detectron2"),
])
def test_missing_extra_names_it(name, module, extra, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" fail
    monkeypatch.setitem(sys.modules, f"{module}.ch_ppocr_det.utils", None)
    with pytest.raises(MissingExtraError, match=rf"ymap-distill\[{extra}\]"):
        create_teacher(name, checkpoint="unused.pth" if name != "rapidocr" else None)


def test_a_rapidocr_without_the_packaged_detector_says_which_version_to_install(monkeypatch, tmp_path) -> None:
    import teachers.rapidocr_text as rapidocr_text

    # rapidocr before 3.9 ships PP-OCRv4 detectors under other names
    monkeypatch.setattr(rapidocr_text, "packaged_model_path", lambda: str(tmp_path / "models" / "absent.onnx"))
    with pytest.raises(TeacherError, match=r"rapidocr [0-9.]+ ships no PP-OCRv6_det_small.onnx; install rapidocr>=3.9"):
        create_teacher("rapidocr")
    with pytest.raises(TeacherError, match=r"checkpoint '.*nope.onnx' is not a file"):
        create_teacher("rapidocr", checkpoint=str(tmp_path / "nope.onnx"))


def test_takes_a_gpu_share_only_with_the_cuda_provider(monkeypatch) -> None:
    """The ONNX detector runs on a GPU only with onnxruntime-gpu; otherwise a Ray build gives it no GPU share."""
    ort = pytest.importorskip("onnxruntime")
    from pipeline.executors import TeacherFactory
    from teachers.registry import teacher_class

    cls = teacher_class("rapidocr")
    for providers, expected in ((["CPUExecutionProvider"], False),
                                (["CUDAExecutionProvider", "CPUExecutionProvider"], True)):
        monkeypatch.setattr(ort, "get_available_providers", lambda providers=providers: providers)
        assert cls.can_use_gpu() is expected
        assert TeacherFactory(cls, {"device": "auto"}).wants_gpu() is expected
    assert not TeacherFactory(cls, {"device": "cpu"}).wants_gpu()


@pytest.mark.parametrize("params", [{"thresh": -0.1}, {"box_thresh": float("nan")}, {"unclip_ratio": 0.0}])
def test_impossible_postprocessing_parameters(params) -> None:
    from teachers import TeacherError

    with pytest.raises(TeacherError, match="must be"):
        create_teacher("rapidocr", **params)
