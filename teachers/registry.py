"""Teacher registry: ``create_teacher(name, **kw)``, ``list_teachers()``; modules load only when asked for."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from teachers.base import Teacher, TeacherError

# name -> "module:Class". Kept as strings so that ``import teachers`` imports no model library.
_TEACHERS: dict[str, str] = {
    "depth-anything-v2": "teachers.depth_anything:DepthAnythingTeacher",
    "dptext-detr": "teachers.dptext_detr:DPTextDETRTeacher",
    "visiongpt2": "teachers.visiongpt2:VisionGPT2Teacher",
    "detectron2-panoptic-fpn": "teachers.detectron2_panoptic:PanopticFPNTeacher",
    "mask2former": "teachers.mask2former:Mask2FormerTeacher",
    "panoptic-gt": "teachers.ground_truth:PanopticGroundTruth",
    "rapidocr": "teachers.rapidocr_text:RapidOCRTeacher",
    "vit-gpt2": "teachers.vit_gpt2:ViTGPT2Teacher",
    "caption-gt": "teachers.ground_truth:CaptionGroundTruth",
    "pose-gt": "teachers.ground_truth:PoseGroundTruth",
    "vitpose": "teachers.vitpose:ViTPoseTeacher",
    "detectron2-keypoint-rcnn": "teachers.detectron2_keypoint:KeypointRCNNTeacher",
}


def register_teacher(name: str, target: str) -> None:
    """Register ``target`` ("package.module:Class") under ``name`` (plugins may add their own)."""
    _TEACHERS[name] = target


def list_teachers(task: str | None = None) -> list[str]:
    """Registered teacher names, optionally only those of one task."""
    names = sorted(_TEACHERS)
    if task is not None:
        names = [n for n in names if teacher_class(n).spec.task == task]
    return names


def teacher_class(name: str) -> type[Teacher]:
    """The class registered under ``name``; an unknown name lists the valid ones."""
    if name not in _TEACHERS:
        raise TeacherError(f"unknown teacher {name!r}; teachers are: {', '.join(sorted(_TEACHERS))}")
    module, _, cls = _TEACHERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def teacher_module(name: str) -> str:
    """The module path ("teachers.depth_anything") that implements teacher ``name``."""
    if name not in _TEACHERS:
        raise TeacherError(f"unknown teacher {name!r}; teachers are: {', '.join(sorted(_TEACHERS))}")
    return _TEACHERS[name].partition(":")[0]


def create_teacher(name: str, **kwargs: Any) -> Teacher:
    """Build the teacher ``name`` with keyword arguments (device, dtype, batch_size, checkpoint, ...)."""
    return teacher_class(name)(**kwargs)


def describe(task: str | None = None) -> str:
    """A readable listing of every registered teacher with its spec (what ``pipeline teachers`` prints)."""
    lines = []
    for name in list_teachers(task):
        spec = teacher_class(name).spec
        lines.append(f"{name}  [{spec.task}]  {spec.description}")
        lines.append(f"    input:   {spec.input}; size: {spec.input_size}")
        for key, what in spec.outputs.items():
            lines.append(f"    output:  {key}: {what}")
        if spec.units:
            lines.append(f"    units:   {spec.units}")
        if spec.extra:
            lines.append(f"    extra:   pip install 'ymap-distill[{spec.extra}]'")
        default = teacher_class(name).default_checkpoint()
        if default is not None:
            lines.append(f"    weights: {default} (without --{spec.task}-checkpoint)")
        lines.append(f"    params:  {', '.join(teacher_params(name)) or '(none)'}")
    return "\n".join(lines)


#: Keywords every teacher takes that the pipeline always sets (--device, --dtype, --batch-size): ``describe``
#: leaves them out, as their constructor defaults are never the ones a build uses.
SET_BY_PIPELINE = ("device", "dtype", "batch_size")


def teacher_params(name: str) -> list[str]:
    """The keyword parameters of teacher ``name`` with their defaults ("input_size=518"), as ``--<task>-param``
    takes them: without those the pipeline sets (``SET_BY_PIPELINE``), without ``checkpoint`` for a teacher that
    takes none, and with the default weights for a ``checkpoint`` whose keyword default is None."""
    cls = teacher_class(name)
    params = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.default is p.empty or p.name in SET_BY_PIPELINE:
            continue
        default = p.default
        if p.name == "checkpoint":
            if not cls.takes_checkpoint:
                continue
            default = default if default is not None else cls.default_checkpoint()
        params.append(f"{p.name}={default!r}")
    return params
