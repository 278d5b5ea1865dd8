"""The stage graph of a build (DESIGN 2 and 4): what each stage reads, its parameters, its code version, and
the fingerprint that names the version of the column it writes.

base; pose; depth -> normals; panoptic -> groups; text; caption -> tokens. A stage's fingerprint is the sha256 of
its name, code version, teacher identity (name + the teacher's own fingerprint, which covers model id,
revision or weights sha256, its parameters and dtype), its parameters, the store size and the fingerprints
of the stages it reads; so changing the depth teacher changes depth and normals and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from shards.codecs import JPEG_QUALITY, PNG_COMPRESSION, png_encoder
from shards.images import MAX_IMAGE_PIXELS
from shards.schema import STORE_FORMAT


@dataclass(frozen=True)
class Stage:
    """One node of the graph; it writes the column of the same name.

    ``kind`` is "base" (decodes COCO images), "teacher" (runs a teacher of ``task`` on full-resolution
    images) or "derived" (a pure function of the first input column's members). Bump ``version`` whenever
    the code that produces the column changes its bytes.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    version: str
    task: str | None = None
    doc: str = ""
    reads_meta: bool = False  # derived stages that also need the base sample's meta.json


STAGES: tuple[Stage, ...] = (
    # 3: cut JPEGs; 4: the keypoints moved to the pose stage
    Stage("base", "base", (), "4", doc="decode, letterbox to SxS"),
    Stage("pose", "teacher", ("base",), "1", "pose", "persons' joints and boxes mapped into the letterbox"),
    Stage("depth", "teacher", ("base",), "2", "depth", "teacher depth mapped into the letterbox"),
    Stage("normals", "derived", ("depth",), "1", doc="3x3 Sobel normals of the depth", reads_meta=True),
    Stage("panoptic", "teacher", ("base",), "1", "panoptic", "contiguous panoptic classes"),
    Stage("groups", "derived", ("panoptic",), "1", doc="class groups of the panoptic map"),
    Stage("text", "teacher", ("base",), "1", "text", "scene-text polygons rasterised"),
    Stage("caption", "teacher", ("base",), "1", "caption", "caption text"),
    Stage("tokens", "derived", ("caption",), "2",  # 2: the stop list of DESIGN 5.4 (was gensim's)
          doc="vocabulary ids and GloVe vectors of the caption"),
)
STAGE_BY_NAME: Mapping[str, Stage] = {s.name: s for s in STAGES}
TEACHER_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.kind == "teacher")


def stage(name: str) -> Stage:
    """Look a stage up by name; an unknown name lists the valid ones (a ``KeyError`` with one line)."""
    try:
        return STAGE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_BY_NAME)}") from None


def dependants(names: Iterable[str]) -> list[str]:
    """The named stages and every stage that reads them, directly or not, in graph order."""
    chosen = {stage(n).name for n in names}
    for s in STAGES:  # STAGES is topologically ordered, so one pass closes the set
        if any(i in chosen for i in s.inputs):
            chosen.add(s.name)
    return [s.name for s in STAGES if s.name in chosen]


def ancestors(names: Iterable[str]) -> list[str]:
    """Every stage the named ones read, directly or not (the named ones excluded), in graph order."""
    wanted = {stage(n).name for n in names}
    found: set[str] = set()
    for s in reversed(STAGES):
        if s.name in wanted or s.name in found:
            found.update(s.inputs)
    return [s.name for s in STAGES if s.name in found and s.name not in wanted]


def canonical_json(obj: Any) -> str:
    """The JSON text every fingerprint hashes: sorted keys, no spaces, numpy scalars as Python numbers."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    return str(obj)


def stage_spec(name: str, size: int, params: Mapping[str, Any], input_fingerprints: Mapping[str, str],
               teacher: str | None = None, teacher_fingerprint: str | None = None) -> dict[str, Any]:
    """Everything the fingerprint of stage ``name`` covers, as a JSON-able dict (saved in column.json).

    Args:
        name: stage name.
        size: store size S.
        params: every stage parameter that changes its output (e.g. the normals scale).
        input_fingerprints: fingerprint of each stage in ``Stage.inputs``.
        teacher: teacher name (teacher stages only).
        teacher_fingerprint: ``Teacher.fingerprint()`` (teacher stages only).

    Returns:
        The spec dict.
    """
    s = stage(name)
    if set(input_fingerprints) != set(s.inputs):
        raise ValueError(f"stage {name!r} reads {list(s.inputs)}, got fingerprints of {sorted(input_fingerprints)}")
    if (s.kind == "teacher") != (teacher is not None and teacher_fingerprint is not None):
        raise ValueError(f"stage {name!r}: a teacher and its fingerprint are given exactly for teacher stages")
    spec: dict[str, Any] = {"stage": s.name, "version": s.version, "size": int(size),
                            "params": dict(params), "inputs": dict(input_fingerprints)}
    if s.kind == "teacher":
        spec["teacher"] = teacher
        spec["teacher_fingerprint"] = teacher_fingerprint
    return spec


def fingerprint(spec: Mapping[str, Any]) -> str:
    """sha256 (hex) of a stage spec's canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def base_params(shard_size: int, max_image_pixels: int = MAX_IMAGE_PIXELS,
                source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parameters of the base stage; everything reads base, so store-wide settings go here.

    ``max_image_pixels`` (which images are rejected as too large) enters only when it is not the default, so the
    stores built before the limit existed, none of whose images it rejects, keep their fingerprints; ``source``
    (the options of a source other than a COCO split) only when there is one, for the same reason.
    """
    params = {"shard_size": int(shard_size), "format": STORE_FORMAT,
              "jpeg_quality": JPEG_QUALITY, "png_compression": PNG_COMPRESSION, "png_encoder": png_encoder()}
    if int(max_image_pixels) != MAX_IMAGE_PIXELS:
        params["max_image_pixels"] = int(max_image_pixels)
    if source:
        params["source"] = dict(source)
    return params


def resolve_specs(size: int, shard_size: int, teachers: Mapping[str, tuple[str, str]],
                  derived_params: Mapping[str, Mapping[str, Any]], max_image_pixels: int = MAX_IMAGE_PIXELS,
                  source: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The spec of every stage that can be resolved, in graph order, each covering its inputs' fingerprints.

    Args:
        size: store size S.
        shard_size: samples per shard.
        teachers: teacher stage -> (teacher name, teacher fingerprint); a teacher stage left out is not
            resolved, nor is any stage that reads it.
        derived_params: derived stage -> its parameters (normals scale, vocabulary settings, ...); a derived
            stage left out is not resolved.
        max_image_pixels: the base stage's limit on input images (see :func:`base_params`).
        source: the options of a source other than a COCO split (see :func:`base_params`).

    Returns:
        stage name -> spec; ``fingerprint(spec)`` names the column version.
    """
    specs: dict[str, dict[str, Any]] = {}
    fps: dict[str, str] = {}
    for s in STAGES:
        if not all(i in fps for i in s.inputs):
            continue
        inputs = {i: fps[i] for i in s.inputs}
        if s.kind == "base":
            spec = stage_spec(s.name, size, base_params(shard_size, max_image_pixels, source), inputs)
        elif s.kind == "teacher":
            if s.name not in teachers:
                continue
            name, tfp = teachers[s.name]
            spec = stage_spec(s.name, size, {}, inputs, teacher=name, teacher_fingerprint=tfp)
        else:
            if s.name not in derived_params:
                continue
            spec = stage_spec(s.name, size, derived_params[s.name], inputs)
        specs[s.name] = spec
        fps[s.name] = fingerprint(spec)
    return specs


def teacher_members(name: str, pred: Mapping[str, Any], meta: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Map one teacher prediction (original resolution) into the members of column ``name``.

    Args:
        name: a teacher stage.
        pred: the teacher's output dict for one image (teachers/base.py contract).
        meta: the base sample's meta.json (letterbox geometry).
        source: the teacher's name (recorded by the pose and caption columns).

    Returns:
        {ext: value} of the column.
    """
    from pipeline import samples

    if name == "pose":
        return samples.pose_sample(pred, meta, source)
    if name == "depth":
        return samples.depth_sample(pred, meta)
    if name == "panoptic":
        return samples.panoptic_sample(pred, meta)
    if name == "text":
        return samples.text_sample(pred, meta)
    if name == "caption":
        return samples.caption_sample(pred, source)
    raise ValueError(f"{name!r} is not a teacher stage")


def derived_members(name: str, parent: Mapping[str, Any], params: Mapping[str, Any], vocab: Any = None,
                    meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Compute the members of derived column ``name`` from its input column's decoded members.

    Args:
        name: a derived stage.
        parent: decoded members of the input column for one sample.
        params: the stage parameters (its spec's ``params``).
        vocab: the split vocabulary (tokens only).
        meta: the base sample's meta.json (stages with ``reads_meta``).

    Returns:
        {ext: value} of the column.
    """
    from pipeline import samples

    if name == "normals":
        return samples.normals_sample(parent["depth.png"], scale=float(params["scale"]), meta=meta)
    if name == "groups":
        return samples.groups_sample(parent["panoptic.png"])
    if name == "tokens":
        return samples.tokens_sample(parent["caption.json"], vocab)
    raise ValueError(f"{name!r} is not a derived stage")
