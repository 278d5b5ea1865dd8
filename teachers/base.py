"""The teacher interface: a frozen spec, a callable batch -> per-image predictions, and a fingerprint.

Every teacher maps a batch of full-resolution RGB uint8 images to raw predictions at the ORIGINAL image
resolution; the pipeline maps them into store geometry. Output contract per task (keys of each per-image
dict):

- ``depth``:    ``depth`` float32 (H, W) (relative inverse depth, larger = nearer; or metres for metric
                models), ``kind`` "relative" | "metric".
- ``panoptic``: ``classes`` uint8 (H, W), contiguous COCO-panoptic ids 0..132 (``shards.taxonomy``),
                255 = void.
- ``text``:     ``polygons`` list of float32 (N, 2) arrays (x, y in original pixels), ``scores`` list of
                float in [0, 1].
- ``caption``:  ``captions`` list of str (one or more per image).
- ``pose``:     ``persons`` list of dicts, one per person: ``keypoints`` float32 (17, 3) in COCO-17 order, x and y in
                original pixels as COCO's pixel indices (x = 3: the centre of pixel 3; the store adds 0.5), inside
                the image (a model's joint outside it is not there), and v the COCO visibility (0 = not there,
                1 = occluded, 2 = visible; a model teacher writes 2 where the joint's confidence reaches its keypoint
                threshold, else 0 with x = y = 0),
                ``bbox`` [x, y, w, h] (original pixels), and for model teachers ``score`` (the person's detection
                score) and ``keypoint_scores`` (17 floats); ``crowd`` list of crowd regions (``bbox`` and
                ``segmentation``, RLE dict or polygons, original pixels; ground truth only, [] from a model).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np

TASKS = ("pose", "depth", "panoptic", "text", "caption")


#: Environment variable naming the folder of weights no hub serves (DPText-DETR's, VisionGPT2's); default
#: ``~/.cache/ymap-distill``.
MODEL_CACHE_ENV = "YMAP_DISTILL_CACHE"


def model_cache(*parts: str) -> str:
    """A path under the model cache folder (``$YMAP_DISTILL_CACHE``, else ``~/.cache/ymap-distill``)."""
    return os.path.join(os.path.expanduser(os.environ.get(MODEL_CACHE_ENV) or "~/.cache/ymap-distill"), *parts)


def expand_home(checkpoint: Any) -> Any:
    """``checkpoint`` with a leading ``~`` expanded to the home folder (a path from a JSON config, say); anything
    else (a hub id, a URL, None) as it is."""
    if isinstance(checkpoint, os.PathLike):
        checkpoint = os.fspath(checkpoint)
    if isinstance(checkpoint, str) and checkpoint.startswith("~"):
        return os.path.expanduser(checkpoint)
    return checkpoint


#: torch threads of a teacher running on the CPU. Float sums split over threads differ in their last bits with the
#: thread count, and a depth map's 16-bit levels with them: a fixed count makes a teacher write the same bytes
#: in-process and in a Ray actor (whose thread count Ray sets from its CPU share), on any number of cores.
CPU_THREADS = 4


@contextlib.contextmanager
def _cpu_threads(device: str) -> Iterator[None]:
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TeacherError(RuntimeError):
    """A teacher cannot be built or run (bad checkpoint, missing extra, bad input); one clear line."""


class MissingExtraError(TeacherError):
    """An optional dependency of a teacher is not installed."""

    def __init__(self, teacher: str, package: str, extra: str) -> None:
        super().__init__(f"teacher {teacher!r}: needs {package!r}; install it with "
                         f"pip install 'ymap-distill[{extra}]'")


@dataclass(frozen=True)
class TeacherSpec:
    """What a teacher takes and gives; shown by ``pipeline teachers``."""

    task: str  # one of TASKS
    description: str
    input: str = "RGB uint8 (H, W, 3), any size, one image per list entry"
    input_size: str = "native"  # how the teacher resizes internally
    outputs: Mapping[str, str] = field(default_factory=dict)  # key -> dtype/shape/units
    units: str = ""
    extra: str | None = None  # pip extra it needs, if any
    needs_annotations: bool = False  # ground-truth teachers read the COCO record instead of pixels
    uses_gpu: bool = True  # False: runs no model on a device (ground truth); its Ray actors get no GPU

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")


@dataclass
class TeacherInput:
    """One image for a teacher: full-resolution RGB pixels plus the COCO record it came from."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, original resolution
    image_id: int = -1
    record: Mapping[str, Any] = field(default_factory=dict)  # COCO annotations (ground-truth teachers)


class Teacher(ABC):
    """Base class of every teacher. Subclasses set ``name`` and ``spec`` and implement ``predict``.

    Args:
        device: torch device string ("cpu", "cuda", "cuda:1").
        dtype: "float32", "float16" or "bfloat16" (half precision only on GPU).
        batch_size: images per model call inside ``__call__``.
    """

    name: ClassVar[str]
    spec: ClassVar[TeacherSpec]
    #: False for a teacher that loads no weights (the ground-truth readers): ``describe`` leaves its
    #: ``checkpoint`` keyword out.
    takes_checkpoint: ClassVar[bool] = True

    def __init__(self, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8) -> None:
        if dtype not in ("float32", "float16", "bfloat16"):
            raise TeacherError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        if dtype != "float32" and self.spec.uses_gpu and not str(device).startswith("cuda"):
            raise TeacherError(f"dtype {dtype} needs a CUDA device (got device={device!r})")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TeacherError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if self.spec.uses_gpu:  # a model teacher puts tensors on it: an unknown or absent device fails here
            _check_device(str(device))
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size

    def __call__(self, inputs: Sequence[TeacherInput]) -> list[dict[str, Any]]:
        """Predict every input, ``batch_size`` images per model call; one dict per input, in order. On the CPU
        with :data:`CPU_THREADS` torch threads, whatever the process was given."""
        for inp in inputs:
            if not isinstance(inp, TeacherInput):
                raise TeacherError(f"teacher {self.name!r}: inputs must be TeacherInput(image, image_id, record) "
                                   f"items, got a {type(inp).__name__}")
        out: list[dict[str, Any]] = []
        with _cpu_threads(str(self.device)):
            for i in range(0, len(inputs), self.batch_size):
                out.extend(self.predict(list(inputs[i:i + self.batch_size])))
        return out

    @classmethod
    def can_use_gpu(cls) -> bool:
        """Whether this teacher would run on a CUDA device in this environment (default ``spec.uses_gpu``); an
        executor gives no GPU share to a teacher that says no."""
        return cls.spec.uses_gpu

    @classmethod
    def default_checkpoint(cls) -> str | None:
        """The weights this teacher loads when given no checkpoint (a hub id, URL or path), None for none; by
        default the ``checkpoint`` keyword's default."""
        param = inspect.signature(cls.__init__).parameters.get("checkpoint")
        return param.default if param is not None and isinstance(param.default, str) else None

    @classmethod
    def resolve_checkpoint(cls, checkpoint: str) -> str:
        """The hub id, URL or path a ``checkpoint`` value names: a leading ``~`` is the home folder (a teacher's
        short names resolve here too)."""
        return expand_home(checkpoint)

    @classmethod
    def check_records(cls, records: Iterable[Mapping[str, Any]]) -> str | None:
        """Why this teacher cannot serve a split whose COCO records (``TeacherInput.record`` dicts) are
        ``records``, or None; the build asks before any work (ground truth the split lacks, say)."""
        return None

    @abstractmethod
    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        """Run the model on one batch (at most ``batch_size`` inputs)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything that changes the output: model id and revision or weights sha256, parameters."""

    def fingerprint(self) -> str:
        """sha256 of the teacher name and ``identity()`` (canonical JSON); the dtype is part of it for a teacher
        that runs a model (``spec.uses_gpu``): the ground-truth readers give the same output at any dtype."""
        ident = {"teacher": self.name, **({"dtype": self.dtype} if self.spec.uses_gpu else {}), **self.identity()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def joints_in_image(xy: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where a model's joints (``(..., 2)`` x, y in pixel indices) may be written: ``(inside, clipped)``, whether
    each lies on the image (within half a pixel of its edge pixels' centres: the image spans -0.5 .. W - 0.5) and
    the joints clipped into 0 .. W-1, 0 .. H-1. A joint predicted past the frame (a person cut by it, its crop
    padded beyond) is not there: pinned to the edge it would teach joints on every image border."""
    x, y = xy[..., 0], xy[..., 1]
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    return inside, np.clip(xy, 0, np.array([width - 1, height - 1], np.float32))


def _check_device(device: str) -> None:
    """TeacherError unless ``device`` is cpu, or a CUDA device this process sees."""
    if device == "cpu":  # the common case needs no torch import (an actor process starts faster without it)
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise TeacherError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise TeacherError(f"device {device!r}: {count} CUDA GPU(s) visible here")
    elif parsed.type != "cpu":
        raise TeacherError(f"device {device!r}: teachers run on cpu or cuda")


def model_files(folder: str | os.PathLike) -> list[str]:
    """The files of a model folder that can change a teacher's output, as relative paths in a fixed order:
    hidden files and folders (``.git``, the hub's ``.cache`` download records) and notes (``README*``,
    ``LICENSE*``, ``*.md``) are left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper().startswith(("README", "LICENSE")) or name.endswith(".md"):
                continue
            found.append(os.path.relpath(os.path.join(root, name), folder))
    return found


def sha256_of_path(path: str | os.PathLike, names: Sequence[str] | None = None) -> str:
    """sha256 of a weights file, or of the ``model_files`` of a folder: each one's relative name, size and
    bytes, in order.

    Args:
        path: a file or folder.
        names: hash only these files of the folder (those that exist), e.g. a tokenizer's.
    """
    h = hashlib.sha256()
    if not os.path.isdir(path):
        _hash_file(h, path)
        return h.hexdigest()
    for rel in model_files(path):
        if names is not None and rel not in names:
            continue
        full = os.path.join(path, rel)
        h.update(rel.encode() + b"\0" + os.path.getsize(full).to_bytes(8, "little"))
        _hash_file(h, full)
    return h.hexdigest()


def _hash_file(h: Any, path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
