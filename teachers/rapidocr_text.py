"""Text teacher: RapidOCR's PP-OCR text detector (ONNX, shipped inside the package), batched, polygons + scores."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from teachers.base import MissingExtraError, Teacher, TeacherError, TeacherInput, TeacherSpec
from teachers.loading import checkpoint_identity, integer, load_or_fail, require, unit_interval
from teachers.preprocess import letterbox_batch

EXTRA = "ocr"
STRIDE = 32
#: The detection model RapidOCR ships (relative to the rapidocr package folder).
PACKAGED_MODEL = os.path.join("models", "PP-OCRv6_det_small.onnx")


def packaged_model_path() -> str:
    """Path of the PP-OCR detection model inside the installed rapidocr package."""
    rapidocr = require("rapidocr", RapidOCRTeacher.name, EXTRA)
    return os.path.join(os.path.dirname(rapidocr.__file__), PACKAGED_MODEL)


class RapidOCRTeacher(Teacher):
    """Text detection with RapidOCR's DB detector: a probability map per image, then RapidOCR's own
    DB post-processing (threshold, contours, unclip) into quadrilaterals in original pixels.

    Args:
        checkpoint: a detection ``.onnx`` file; default (None) is the model shipped inside rapidocr.
        input_size: long side of the model input (multiple of 32; 960 suits COCO's 640-pixel images).
        thresh: probability threshold of the text mask.
        box_thresh: minimum mean probability of a kept box (its score).
        unclip_ratio: how far each box is grown (DB's unclip).
        device: "cpu" or "cuda" (CUDA execution provider of onnxruntime when it is installed).
        dtype, batch_size: see ``Teacher`` (the ONNX model runs in float32).
    """

    name = "rapidocr"
    spec = TeacherSpec(
        task="text",
        description="RapidOCR text detection (PP-OCR DB detector, ONNX model shipped with rapidocr)",
        input_size="long side -> input_size, letterboxed on a square canvas (multiple of 32), bilinear, "
                   "BGR, mean/std 0.5",
        outputs={"polygons": "list of float32 (4, 2) arrays, x y in original pixels",
                 "scores": "list of float in [0, 1] (mean text probability in the box)"},
        units="pixels",
        extra=EXTRA,
    )

    def __init__(self, *, checkpoint: str | None = None, input_size: int = 960, thresh: float = 0.3,
                 box_thresh: float = 0.5, unclip_ratio: float = 1.6, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 8) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        if integer("input_size", input_size, STRIDE) % STRIDE:
            raise TeacherError(f"input_size must be a positive multiple of {STRIDE}, got {input_size}")
        thresh, box_thresh = unit_interval("thresh", thresh), unit_interval("box_thresh", box_thresh)
        if not (isinstance(unclip_ratio, (int, float)) and 0 < unclip_ratio < float("inf")):
            raise TeacherError(f"unclip_ratio must be a finite number > 0, got {unclip_ratio!r}")
        ort = require("onnxruntime", self.name, EXTRA)
        utils = require("rapidocr.ch_ppocr_det.utils", self.name, EXTRA)
        self.checkpoint = os.path.expanduser(checkpoint) if checkpoint else packaged_model_path()
        self.input_size = int(input_size)
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(str(device).partition(":")[2] or 0)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        if not os.path.isfile(self.checkpoint):
            if not checkpoint:  # rapidocr before 3.9 ships PP-OCRv4 models under other names
                from importlib.metadata import PackageNotFoundError, version

                try:
                    installed = version("rapidocr")
                except PackageNotFoundError:  # importable without its package metadata (a source copy)
                    installed = "as installed"
                raise TeacherError(f"teacher {self.name!r}: rapidocr {installed} ships no "
                                   f"{os.path.basename(PACKAGED_MODEL)}; install rapidocr>=3.9 "
                                   "(pip install 'ymap-distill[ocr]'), or pass a detection .onnx as checkpoint")
            raise TeacherError(f"teacher {self.name!r}: checkpoint {self.checkpoint!r} is not a file")
        self.session = load_or_fail(self.name, self.checkpoint,
                                    lambda: ort.InferenceSession(self.checkpoint, providers=providers))
        _check_detector(self.name, self.checkpoint, self.session)
        self.input_name = self.session.get_inputs()[0].name
        self.postprocess = utils.DBPostProcess(thresh=thresh, box_thresh=box_thresh, unclip_ratio=unclip_ratio,
                                               use_dilation=True, score_mode="fast")
        from importlib.metadata import version

        self._identity = {**checkpoint_identity(self.checkpoint), "input_size": self.input_size,
                          "rapidocr": version("rapidocr"),  # its DB post-processing is part of the output
                          "thresh": float(thresh), "box_thresh": float(box_thresh),
                          "unclip_ratio": float(unclip_ratio)}

    @classmethod
    def default_checkpoint(cls) -> str | None:
        """The detection model inside the installed rapidocr package (None without the extra)."""
        try:
            return packaged_model_path()
        except MissingExtraError:
            return None

    @classmethod
    def can_use_gpu(cls) -> bool:
        """Only with an onnxruntime that has the CUDA execution provider (onnxruntime-gpu)."""
        try:
            import onnxruntime
        except ImportError:
            return False
        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            x, geo = letterbox_batch([i.image for i in inputs], self.input_size, multiple=STRIDE,
                                     device=self.device, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                     mode="bilinear", channels="BGR")
        try:
            prob = self.session.run(None, {self.input_name: x.cpu().numpy()})[0]  # (B, 1, S, S)
        except Exception as exc:  # noqa: BLE001 - an onnxruntime failure is reported in one line
            raise TeacherError(f"teacher {self.name!r}: the ONNX model failed ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        outs = []
        for i in range(len(inputs)):
            (h, w), (rh, rw) = geo.original[i], geo.resized[i]
            boxes, scores = self.postprocess(np.ascontiguousarray(prob[i:i + 1, :, :rh, :rw]), (h, w))
            outs.append({"polygons": [np.asarray(b, np.float32).reshape(-1, 2) for b in boxes],
                         "scores": [float(np.clip(s, 0.0, 1.0)) for s in scores]})
        return outs


def _shape(arg: Any) -> str:
    """An ONNX input or output's shape as "(?, 3, ?, ?)", a free dimension as "?"."""
    return "(" + ", ".join(str(d) if isinstance(d, int) else "?" for d in arg.shape) + ")"


def _check_detector(teacher: str, checkpoint: str, session: Any) -> None:
    """TeacherError unless the ONNX model has a DB text detector's interface: one (B, 3, H, W) image input and a
    (B, 1, H, W) probability map as its first output (RapidOCR's recognition and orientation models load too,
    and then every image would fail)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()

    def fits(arg: Any, channels: int) -> bool:
        shape = arg.shape
        return (shape is not None and len(shape) == 4 and (not isinstance(shape[1], int) or shape[1] == channels)
                and "float" in str(arg.type))

    if len(inputs) != 1 or not outputs or not fits(inputs[0], 3) or not fits(outputs[0], 1):
        got = (f"{', '.join(_shape(i) for i in inputs)} -> {', '.join(_shape(o) for o in outputs)}"
               if all(a.shape is not None for a in (*inputs, *outputs)) else "other shapes")
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint} is not a text detection model: it maps "
                           f"{got}; the detector maps (B, 3, H, W) images -> (B, 1, H, W) text probabilities")


def save_tiny_checkpoint(out_dir: str, seed: int = 0) -> str:
    """Write a tiny random DB-style detector (conv -> sigmoid, dynamic shapes) as ``det.onnx``; returns its path.

    The model has the detector's interface (``x`` (B, 3, H, W) -> (B, 1, H, W) probabilities), so it
    exercises loading, batching and post-processing; it detects nothing meaningful.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 1.0, (1, 3, 3, 3)).astype(np.float32)
    bias = np.array([rng.normal(0.0, 0.5)], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["logits"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["logits"], ["prob"])],
        "tiny_db_detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["B", 1, "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "det.onnx")
    onnx.save(model, path)
    return path
