"""Identity-cost teachers for the build tests: they count their calls and derive outputs from the pixels."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from teachers.base import Teacher, TeacherInput, TeacherSpec

if TYPE_CHECKING:
    from pipeline.build import BuildConfig

CALLS: dict[str, int] = {}  # teacher name -> images predicted in this process
BUILT: dict[str, int] = {}  # teacher name -> instances made in this process


class _Fake(Teacher):
    task: ClassVar[str]

    def __init__(self, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 checkpoint: str | None = None, gain: float = 1.0, delay: float = 0.0,
                 die_once: str | None = None, refuse: int | None = None) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        BUILT[self.name] = BUILT.get(self.name, 0) + 1
        self.checkpoint = checkpoint
        self.gain = gain
        self.delay = delay  # seconds per image; does not change the output, so not part of identity()
        self.die_once = die_once  # a marker file: the first process to predict creates it and dies
        self.refuse = refuse  # an image id whose batch raises a TeacherError (the image's own fault)

    def identity(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "gain": self.gain, **({"refuse": self.refuse} if self.refuse else {})}

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        if self.die_once is not None and not os.path.exists(self.die_once):
            open(self.die_once, "w").close()
            os._exit(1)  # a crashed worker, as an out-of-memory kill would leave it
        if any(inp.image_id == self.refuse for inp in inputs):
            from teachers.base import TeacherError

            raise TeacherError(f"image {self.refuse}: {self.name} refuses it")
        CALLS[self.name] = CALLS.get(self.name, 0) + len(inputs)
        time.sleep(self.delay * len(inputs))
        return [self.one(inp) for inp in inputs]


class FakeDepth(_Fake):
    name = "fake-depth"
    spec = TeacherSpec(task="depth", description="mean of RGB times gain")

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        return {"depth": inp.image.astype(np.float32).mean(axis=2) * self.gain + 1.0, "kind": "relative"}


class FakePanoptic(_Fake):
    name = "fake-panoptic"
    spec = TeacherSpec(task="panoptic", description="red channel modulo 133")

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        red = inp.image[..., 0] if self.gain == 1 else (inp.image[..., 0] // 2 * 2)  # gain != 1: half the classes
        return {"classes": (red % 133).astype(np.uint8)}


class FakeText(_Fake):
    name = "fake-text"
    spec = TeacherSpec(task="text", description="one box in the image centre")

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        h, w = inp.image.shape[:2]
        right = w / 4 + w / 4 * self.gain  # gain scales the box's width
        box = np.array([[w / 4, h / 4], [right, h / 4], [right, h / 2], [w / 4, h / 2]], np.float32)
        return {"polygons": [box], "scores": [0.9]}


class FakeCaption(_Fake):
    name = "fake-caption"
    spec = TeacherSpec(task="caption", description="the COCO captions", uses_gpu=False)

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        captions = list(inp.record.get("captions") or ["a picture"])
        return {"captions": captions if self.gain == 1 else captions[:1]}  # gain != 1: the first caption only


class FakePose(_Fake):
    name = "fake-pose"
    spec = TeacherSpec(task="pose", description="one person filling the image's centre half")

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        h, w = inp.image.shape[:2]
        x0, y0, bw, bh = w / 4, h / 4, w / 2 * min(self.gain, 2.0), h / 2  # gain scales the person's width
        rows = np.linspace(0.1, 0.9, 17, dtype=np.float32)
        keypoints = np.stack([x0 + bw * (0.4 + 0.2 * (np.arange(17) % 2)), y0 + bh * rows, np.full(17, 2.0)], 1)
        keypoints[inp.image_id % 17] = 0  # one joint not seen
        scores = [0.9] * 17
        return {"persons": [{"keypoints": keypoints.astype(np.float32), "bbox": [x0, y0, bw, bh], "score": 0.8,
                             "keypoint_scores": scores}], "crowd": []}


FAKES = {cls.name: f"{__name__}:{cls.__name__}"
         for cls in (FakePose, FakeDepth, FakePanoptic, FakeText, FakeCaption)}


#: the fakes as build-targets flags, one per teacher stage
FLAGS = [flag for cls in (FakePose, FakeDepth, FakePanoptic, FakeText, FakeCaption)
         for flag in (f"--{cls.spec.task}-teacher", cls.name)]


def teacher_process(teacher: Teacher) -> tuple[str, int]:
    """A teacher unit for executor tests: which teacher ran it, in which process."""
    return teacher.name, os.getpid()


def teacher_gpus(teacher: Teacher) -> tuple[str, int, float]:
    """A teacher unit for executor tests: which teacher ran it, in which process, with what GPU share."""
    import ray

    return teacher.name, os.getpid(), float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def teacher_fails(teacher: Teacher) -> None:
    from teachers.base import TeacherError

    raise TeacherError(f"image 73: {teacher.name} cannot read its input")


def takes(value: Any) -> Any:
    return value


def register() -> None:
    """Add the fakes to this process's teacher registry."""
    from teachers.registry import register_teacher

    for name, target in FAKES.items():
        register_teacher(name, target)


def register_for_test(monkeypatch: Any) -> dict[str, int]:
    """Add the fakes to the registry for the life of ``monkeypatch``; returns the (cleared) call counter."""
    from teachers import registry

    for name, target in FAKES.items():
        monkeypatch.setitem(registry._TEACHERS, name, target)
    CALLS.clear()
    BUILT.clear()
    return CALLS


def make_config(demo_root: Path, out: Path, **kw: Any) -> "BuildConfig":
    """A local build of the demo train split with the fake teachers; keywords override any field."""
    from pipeline.build import BuildConfig

    base = dict(coco_root=str(demo_root), split="train2017", out=str(out), executor="local", size=64, shard_size=4,
                device="cpu", progress=False, pose_teacher="fake-pose", depth_teacher="fake-depth",
                panoptic_teacher="fake-panoptic", text_teacher="fake-text", caption_teacher="fake-caption",
                glove=str(demo_root / "glove" / "glove.demo.300d.txt"))
    return BuildConfig(**{**base, **kw})


def teacher_raises(teacher: Teacher, log: str, kind: str) -> None:
    """A teacher call that notes each attempt in ``log`` and fails: with a TeacherError (the input's fault) or a
    RuntimeError (what a lost GPU or a flaky read gives)."""
    from teachers.base import TeacherError

    with open(log, "a") as f:
        f.write("attempt\n")
    raise (TeacherError if kind == "input" else RuntimeError)(f"{kind} failure of {teacher.name}")
