"""The settings of a build: ``BuildConfig``, one frozen dataclass read by the CLI, the planner, the runner and
``pipeline status`` (a module of its own, so that none of them imports another for it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from shards.images import MAX_IMAGE_PIXELS

__all__ = ["BuildConfig"]


@dataclass(frozen=True)
class BuildConfig:
    """Every setting of ``pipeline build-targets`` with its default (CLI flags and config-file keys alike).

    Teacher ``*_params`` are extra constructor keywords of that teacher (they enter its fingerprint).
    """

    coco_root: str = "data/coco"
    images: str | None = None  # a folder of images to build the split from, instead of a COCO split
    videos: str | None = None  # a video, or a folder of videos, whose sampled frames make the split
    frame_step: int = 0  # videos: every N-th frame (0: by video_fps)
    video_fps: float = 1.0  # videos: frames per second of video taken, when frame_step is 0
    split: str = "train2017"
    out: str = "shards"
    stages: tuple[str, ...] = ()  # empty: every stage; else these stages and their dependants
    force: bool = False  # rebuild the chosen stages' units even when finished
    executor: str = "ray"  # ray | local
    ray_address: str | None = None  # None: RAY_ADDRESS, else start a local cluster
    num_cpus: int | None = None  # CPUs of a local Ray cluster started here
    size: int = 256  # store size S
    max_image_pixels: int = MAX_IMAGE_PIXELS  # input images above it are rejected as too-large, undecoded
    shard_size: int = 1000
    batch_size: int = 8  # images per teacher call
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"
    pose_teacher: str = "pose-gt"
    pose_checkpoint: str | None = None
    pose_params: Mapping[str, Any] = field(default_factory=dict)
    depth_teacher: str = "depth-anything-v2"
    depth_checkpoint: str | None = None
    depth_params: Mapping[str, Any] = field(default_factory=dict)
    panoptic_teacher: str = "detectron2-panoptic-fpn"
    panoptic_checkpoint: str | None = None
    panoptic_params: Mapping[str, Any] = field(default_factory=dict)
    text_teacher: str = "dptext-detr"
    text_checkpoint: str | None = None
    text_params: Mapping[str, Any] = field(default_factory=dict)
    caption_teacher: str = "visiongpt2"
    caption_checkpoint: str | None = None
    caption_params: Mapping[str, Any] = field(default_factory=dict)
    normals_scale: float = 240.0
    vocab_size: int = 2048
    glove: str = "glove-wiki-gigaword-300"  # GloVe text file, or gensim model name
    vocab_split: str = "train2017"  # the split whose captions make the vocabulary; others reuse its vocab.json
    gpus_per_teacher: float | None = None  # None: the cluster's GPUs shared by the GPU teacher actors
    cpus_per_teacher: float = 0.0
    actors_per_teacher: int = 1
    shared_teacher_actors: bool | None = None  # None: a pool per GPU teacher, one shared pool for the others
    max_inflight_shards: int = 4  # decoded shards alive at once (bounds memory)
    retries: int = 3
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = list(self.stages)
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}
