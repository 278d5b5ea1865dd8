"""The one table of the store: columns, their members, extensions, codecs, dtypes and shapes (DESIGN 3)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from shards.taxonomy import GLOVE_DIM, NUM_TOKENS

STORE_FORMAT = "ymap-store/2"  # 2: pose.json moved from base to its own pose column
DEFAULT_STORE_SIZE = 256  # S: side of the square letterbox every image-shaped member has
MAX_STORE_SIZE = 4096  # the largest S a store may declare: it bounds what decoding one member can allocate
DEFAULT_SHARD_SIZE = 1000
KEY_DIGITS = 12  # key = COCO image id zero-padded to 12 digits, no dots

MANIFEST_NAME = "manifest.json"
COLUMN_RECORD_NAME = "column.json"
VOCAB_NAME = "vocab.json"
REJECTED_NAME = "rejected.jsonl"
BUILD_REPORT_NAME = "build-report.json"
TEACHER_RECORD_NAME = "teachers.json"  # the teachers' fingerprints by settings (pipeline.teacher_record)
FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")  # a column version: a stage fingerprint, sha256 hex (DESIGN 4)
SOURCE_IDS_NAME = "ids.json"  # a folder source's file -> id map (pipeline.sources)
BUILD_LOCK_NAME = "build.lock"  # held by the one build of the split running now; names it (shards.atomic.held)


@dataclass(frozen=True)
class Member:
    """One file of a sample inside a column's tar: ``<key>.<ext>``.

    ``shape`` uses ``"S"`` for the store size; ``None`` means not an array.
    """

    ext: str
    codec: str  # jpeg | png | npy | json
    dtype: str | None = None
    shape: tuple[int | str, ...] | None = None
    doc: str = ""


@dataclass(frozen=True)
class Column:
    """A stage's output column: every shard holds the same keys as the base column's shard."""

    name: str
    members: tuple[Member, ...]
    doc: str = ""

    @property
    def exts(self) -> tuple[str, ...]:
        return tuple(m.ext for m in self.members)

    def member(self, ext: str) -> Member:
        for m in self.members:
            if m.ext == ext:
                return m
        raise KeyError(f"column {self.name!r} has no member {ext!r} (members: {', '.join(self.exts)})")


def _col(name: str, doc: str, *members: Member) -> Column:
    return Column(name, tuple(members), doc)


COLUMNS: Mapping[str, Column] = MappingProxyType({c.name: c for c in (
    _col("base", "letterboxed image and its geometry",
         Member("jpg", "jpeg", "uint8", ("S", "S", 3), "RGB letterbox"),
         Member("meta.json", "json", doc="id, file_name, orig_size [w, h], scale, offset [x, y], size")),
    _col("pose", "persons from the pose teacher (COCO keypoints or a model) in store pixels",
         Member("pose.json", "json", doc="persons: keypoints 17x(x, y, v), bbox[, score, keypoint_scores]; crowd "
                                         "regions; source")),
    _col("depth", "teacher depth, per-image min..max of valid pixels mapped to 0..65535",
         Member("depth.png", "png", "uint16", ("S", "S"), "relative inverse depth (larger = nearer)"),
         Member("depth.json", "json", doc="kind (relative|metric), raw min/max, scale")),
    _col("normals", "Sobel normals from depth, round((n + 1) * 127.5)",
         Member("normals.png", "png", "uint8", ("S", "S", 3), "x, y, z")),
    _col("panoptic", "contiguous COCO-panoptic class per pixel",
         Member("panoptic.png", "png", "uint8", ("S", "S"), "0..132, 255 = void")),
    _col("groups", "class groups of DESIGN 5.3",
         Member("groups.png", "png", "uint8", ("S", "S"), "0 = unlabeled, 1..10")),
    _col("text", "scene-text mask rasterised from the text teacher's polygons",
         Member("text.png", "png", "uint8", ("S", "S"), "0 or 255"),
         Member("text.json", "json", doc="polygons (store pixels), scores")),
    _col("caption", "caption text",
         Member("caption.json", "json", doc="captions (list of str), source")),
    _col("tokens", "vocabulary ids and normalised GloVe vectors of the caption words",
         Member("tokens.json", "json", doc="ids: up to 32 vocabulary ids"),
         Member("glove.npy", "npy", "float16", (NUM_TOKENS, GLOVE_DIM), "first 8 ids' vectors, zero padded")),
)})


def column(name: str) -> Column:
    """Look a column up by name, with an error listing the valid names."""
    try:
        return COLUMNS[name]
    except KeyError:
        raise KeyError(f"unknown column {name!r}; columns are: {', '.join(COLUMNS)}") from None


def key_of(image_id: int) -> str:
    """Sample key of a COCO image id: ``397133 -> '000000397133'``."""
    if image_id < 0 or image_id >= 10**KEY_DIGITS:
        raise ValueError(f"image id {image_id} does not fit {KEY_DIGITS} digits")
    return f"{image_id:0{KEY_DIGITS}d}"


def shard_name(split: str, index: int) -> str:
    """Name (without ``.tar``) of shard ``index`` of a split, the same in every column."""
    return f"{split}-{index:06d}"


def resolve_shape(shape: tuple[int | str, ...], size: int) -> tuple[int, ...]:
    """Replace the ``"S"`` placeholders of a member shape with the store size."""
    return tuple(size if d == "S" else int(d) for d in shape)
