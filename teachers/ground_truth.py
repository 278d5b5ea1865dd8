"""Ground-truth teachers: COCO panoptic annotations, human captions and person keypoints, read from the image's
record."""

from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any, Iterable, Mapping

import numpy as np

from shards.codecs import CodecError, decode_png
from teachers.base import Teacher, TeacherError, TeacherInput, TeacherSpec
from teachers.panoptic_ids import PANOPTIC_OUTPUTS, contiguous_from_coco_png


class _GroundTruth(Teacher):
    """A teacher that reads annotations instead of running a model; it takes no checkpoint.

    Subclasses declare their one output in ``spec.outputs`` and read it from each image's record in ``_read``.
    """

    takes_checkpoint = False

    def __init__(self, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 64,
                 checkpoint: str | None = None) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        if checkpoint is not None:
            raise TeacherError(f"teacher {self.name!r}: reads COCO annotations and takes no checkpoint")

    def identity(self) -> dict[str, Any]:
        return {"source": "coco-annotations", "version": 1}

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        (key,) = self.spec.outputs
        return [{key: self._read(inp)} for inp in inputs]

    @abstractmethod
    def _read(self, inp: TeacherInput) -> Any:
        """The output of one image, read from its record; TeacherError when the record lacks it."""


class PanopticGroundTruth(_GroundTruth):
    """COCO panoptic ground truth (record["panoptic"] = {"file", "segments_info"}) as contiguous classes."""

    name = "panoptic-gt"
    spec = TeacherSpec(
        task="panoptic",
        description="COCO panoptic ground truth (splits that have panoptic annotations)",
        input="COCO record with 'panoptic': {'file': PNG path, 'segments_info': [...]}",
        outputs=PANOPTIC_OUTPUTS,
        units="class id",
        needs_annotations=True,
        uses_gpu=False,
    )

    @classmethod
    def check_records(cls, records: Iterable[Mapping[str, Any]]) -> str | None:
        first = next((r["panoptic"] for r in records if r.get("panoptic")), None)
        if first is None:
            return ("the split has no panoptic annotations (annotations/panoptic_<split>.json from COCO's "
                    "panoptic_annotations_trainval2017.zip); use a panoptic model teacher for it")
        folder = os.path.dirname(first["file"])
        if not os.path.isdir(folder):
            return (f"its panoptic PNG folder {folder} does not exist (unzip panoptic_<split>.zip, inside "
                    "panoptic_annotations_trainval2017.zip, into annotations/)")
        return None

    def _read(self, inp: TeacherInput) -> np.ndarray:
        pan = inp.record.get("panoptic")
        if not pan:
            raise TeacherError(f"image {inp.image_id} has no panoptic annotation; use a panoptic model "
                               f"teacher for this split")
        try:
            with open(pan["file"], "rb") as f:
                rgb = decode_png(f.read())
        except (OSError, CodecError) as exc:
            raise TeacherError(f"image {inp.image_id}: cannot read panoptic PNG {pan['file']!r} ({exc})") from exc
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise TeacherError(f"image {inp.image_id}: panoptic PNG {pan['file']!r} is not RGB (shape {rgb.shape}); "
                               "COCO panoptic PNGs encode segment ids in RGB")
        if rgb.shape[:2] != inp.image.shape[:2]:
            raise TeacherError(f"image {inp.image_id}: panoptic PNG {pan['file']!r} is {rgb.shape[1]}x{rgb.shape[0]}, "
                               f"the image {inp.image.shape[1]}x{inp.image.shape[0]}")
        try:
            return contiguous_from_coco_png(rgb[..., :3], pan["segments_info"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TeacherError(f"image {inp.image_id}: malformed panoptic segments_info ({type(exc).__name__}: "
                               f"{exc})") from None


class CaptionGroundTruth(_GroundTruth):
    """COCO human captions (record["captions"], usually five per image)."""

    name = "caption-gt"
    spec = TeacherSpec(
        task="caption",
        description="COCO ground-truth captions (all human captions of the image)",
        input="COCO record with 'captions': [str, ...]",
        outputs={"captions": "list of str"},
        units="text",
        needs_annotations=True,
        uses_gpu=False,
    )

    @classmethod
    def check_records(cls, records: Iterable[Mapping[str, Any]]) -> str | None:
        if not any(r.get("captions") for r in records):
            return "the split has no caption annotations; use a caption model teacher for it"
        return None

    def _read(self, inp: TeacherInput) -> list[str]:
        raw = inp.record.get("captions") or []
        if isinstance(raw, str):  # one caption given as a string, not a list of them
            raw = [raw]
        # An image without a (non-empty) caption gets none: its caption.json lists no caption and its eight token
        # slots stay empty, as the slots past a short caption are; one such image never fails its shard.
        return [str(c).strip() for c in raw if str(c).strip()]


class PoseGroundTruth(_GroundTruth):
    """COCO person keypoints (record["persons"], record["crowd"], read from person_keypoints_<split>.json): the
    people with their 17 joints and boxes as annotated, crowd annotations as regions the pose loss ignores."""

    name = "pose-gt"
    spec = TeacherSpec(
        task="pose",
        description="COCO person keypoint ground truth (persons, 17 joints, crowd regions)",
        input="COCO record with 'persons': [{'keypoints': 51 numbers, 'bbox': [x, y, w, h]}] and 'crowd'",
        outputs={"persons": "list of {keypoints (17, 3) float32 x, y, v; bbox [x, y, w, h]}",
                 "crowd": "list of {bbox, segmentation}"},
        units="pixels of the original image",
        needs_annotations=True,
        uses_gpu=False,
    )

    @classmethod
    def check_records(cls, records: Iterable[Mapping[str, Any]]) -> str | None:
        if not any(r.get("keypoints_annotated") for r in records):
            return ("the split has no person keypoint annotations (annotations/person_keypoints_<split>.json); use a "
                    "pose model teacher for it (vitpose, detectron2-keypoint-rcnn)")
        return None

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        return [self._read(inp) for inp in inputs]  # two outputs, persons and crowd

    def _read(self, inp: TeacherInput) -> dict[str, Any]:
        if not inp.record.get("keypoints_annotated"):
            raise TeacherError(f"image {inp.image_id} has no keypoint annotations; use a pose model teacher for it")
        persons = [{"keypoints": np.asarray(p["keypoints"], np.float32).reshape(-1, 3),
                    "bbox": [float(v) for v in p["bbox"]]} for p in inp.record.get("persons", [])]
        return {"persons": persons, "crowd": [dict(c) for c in inp.record.get("crowd", [])]}
