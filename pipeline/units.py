"""The units of work of a build, one function per kind of (stage, shard) unit; executors run them anywhere.

Every unit reads its inputs (COCO files, or an input column's shard from the store), writes exactly one
shard of one column version with ``shards.writer.ColumnWriter`` and returns a small ``UnitResult``; big data
(the full-resolution images a shard's teachers need) travels only as the ``Decoded`` object of a decode unit.
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shards.atomic import atomic_write_json
from shards.codecs import decode_member
from shards.layout import column_dir, shard_path
from shards.manifest import read_json
from shards.schema import column as get_column
from shards.schema import key_of
from shards.writer import ColumnWriter

from pipeline.malloc import tune_malloc
from pipeline.stages import derived_members, teacher_members
from pipeline.stages import stage as get_stage

log = logging.getLogger(__name__)
tune_malloc()  # every process that runs units imports this module first: the driver, Ray's workers and actors


@dataclass
class UnitResult:
    """What the driver learns from a finished unit."""

    stage: str
    shard: str
    images: int  # samples written
    seconds: float  # time spent inside the unit
    rejected: list[dict[str, Any]] = field(default_factory=list)  # base units only
    written: bool = True  # False for a decode unit that only fed teachers
    emptied: list[dict[str, Any]] = field(default_factory=list)  # images a teacher refused: written empty


@dataclass
class Decoded:
    """A shard's decoded images for its teacher units: keys, base meta and full-resolution inputs."""

    shard: str
    keys: list[str]
    metas: list[dict[str, Any]]
    inputs: list[Any]  # teachers.base.TeacherInput, one per key


def rejected_path(split_path: str | os.PathLike, base_fp: str, shard: str) -> Path:
    """Where a base unit records the images of its shard it rejected (written before the shard itself)."""
    return column_dir(split_path, "base", base_fp) / f"{shard}.rejected.json"


def read_rejected(split_path: str | os.PathLike, base_fp: str, shard: str) -> list[dict[str, Any]]:
    """The rejected lines a finished base unit recorded."""
    return list(read_json(rejected_path(split_path, base_fp, shard)))


def decode_unit(shard: str, records: Sequence[Any], size: int, split_path: str, base_fp: str,
                base_spec: Mapping[str, Any], write_base: bool, keep_images: bool = True) -> tuple[UnitResult, Decoded]:
    """Decode a shard's images; write the base shard when asked; return the teachers' inputs.

    Args:
        shard: shard name.
        records: the shard's ``pipeline.coco.ImageRecord``s, sorted by id.
        size: store size S.
        split_path: the split folder of the store.
        base_fp: base column fingerprint.
        base_spec: base stage spec (saved in column.json).
        write_base: write the base shard (False when it is already finished and only teachers need pixels).
        keep_images: return the full-resolution images (only teacher units need them).

    Returns:
        (result, decoded): the base unit's result and the decoded images of the non-rejected ids.
    """
    from pipeline.samples import RejectedImage, base_sample
    from shards.images import MAX_IMAGE_PIXELS
    from teachers.base import TeacherInput

    t0 = time.perf_counter()
    samples, rejected, metas, inputs = [], [], [], []
    max_pixels = base_spec["params"].get("max_image_pixels", MAX_IMAGE_PIXELS)
    try:
        for rec in records:
            try:
                members, rgb = base_sample(rec, size, max_pixels)
            except RejectedImage as e:
                rejected.append({"id": int(rec.image_id), "file_name": rec.file_name, "reason": e.reason,
                                 "detail": str(e)})
                continue
            key = key_of(int(rec.image_id))
            samples.append((key, members))
            metas.append(members["meta.json"])
            if keep_images:
                inputs.append(TeacherInput(image=rgb, image_id=int(rec.image_id), record=rec.to_record()))
    finally:
        if any(getattr(r, "frame", None) is not None for r in records[:1]):
            from pipeline.sources import release_video

            release_video()  # a video source's open file: not kept past the unit
    if write_base:
        # The rejected list lands first: a finished base shard always has it, so a resumed run can rebuild
        # rejected.jsonl without decoding again.
        atomic_write_json(rejected_path(split_path, base_fp, shard), rejected)
        ColumnWriter(split_path, "base", base_fp, base_spec).write_shard(shard, samples)
    result = UnitResult("base", shard, len(samples), time.perf_counter() - t0, rejected, written=write_base)
    return result, Decoded(shard, [k for k, _ in samples], metas, inputs)


@dataclass
class Predicted:
    """A teacher's output for one shard, already mapped into store geometry (small: S x S members)."""

    samples: list[tuple[str, dict[str, Any]]]
    seconds: float
    metas: list[dict[str, Any]] = field(default_factory=list)  # the base meta.json of each sample
    emptied: list[dict[str, Any]] = field(default_factory=list)  # {"id", "stage", "reason"} of refused images


#: what a teacher stage writes for an image its teacher refuses (a TeacherError of that image alone): the store's
#: own meaning of "nothing here". Depth has none: a refused depth image still fails its shard.
EMPTY_PREDICTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {
    # no persons, and the whole image a crowd region: the pose loss ignores it (no persons alone would say "nobody")
    "pose": lambda image: {"persons": [], "crowd": [{"bbox": [0.0, 0.0, *map(float, image.shape[1::-1])]}]},
    "caption": lambda image: {"captions": []},  # eight empty token slots
    "text": lambda image: {"polygons": [], "scores": []},  # no text
    "panoptic": lambda image: {"classes": np.full(image.shape[:2], 255, np.uint8)},  # void; groups: unlabeled
}

def teacher_predict(teacher: Any, stage: str, decoded: Decoded) -> Predicted:
    """Run a teacher over a decoded shard and map its predictions into the members of the stage's column.

    Encoding and writing are left to ``write_unit`` (a CPU task on Ray), so a GPU actor goes straight on to
    the next shard.

    Args:
        teacher: a ``teachers.base.Teacher`` (held by the executor, loaded once).
        stage: the teacher stage.
        decoded: the shard's ``Decoded``.

    Returns:
        The shard's samples and the seconds spent.
    """
    from teachers.base import TeacherError

    t0 = time.perf_counter()
    if hasattr(teacher, "take_wait"):
        teacher.take_wait()  # a failed unit's wait must not count against this one
    emptied: list[dict[str, Any]] = []
    try:
        preds = teacher(decoded.inputs) if decoded.inputs else []
    except TeacherError:  # one image's fault, most likely: the others go on, that one gets the empty target
        if stage not in EMPTY_PREDICTIONS:
            raise
        preds = []
        for inp in decoded.inputs:
            try:
                preds += teacher([inp])
            except TeacherError as e:
                preds.append(EMPTY_PREDICTIONS[stage](inp.image))
                emptied.append({"id": int(inp.image_id), "stage": stage, "reason": str(e).splitlines()[0][:300]})
    if len(preds) != len(decoded.inputs):
        raise RuntimeError(f"teacher {teacher.name!r} returned {len(preds)} predictions for "
                           f"{len(decoded.inputs)} images of {decoded.shard}")
    samples = [(key, teacher_members(stage, pred, meta, teacher.name))
               for key, pred, meta in zip(decoded.keys, preds, decoded.metas)]
    waited = teacher.take_wait() if hasattr(teacher, "take_wait") else 0.0  # for another unit's model call
    return Predicted(samples, time.perf_counter() - t0 - waited, list(decoded.metas), emptied)


def write_unit(stage: str, split_path: str, fp: str, spec: Mapping[str, Any], shard: str, predicted: Predicted,
               chained: Sequence[tuple[str, str, Mapping[str, Any]]] = ()) -> list[UnitResult]:
    """Encode and write a teacher stage's shard, then the shards of the derived stages chained to it.

    A chained derived stage (normals after depth, groups after panoptic) is computed from the members still
    in memory, so its unit neither reads nor decodes the shard just written; the bytes are the same as
    ``derived_unit``'s (PNG is lossless and meta.json round-trips exactly). A chained stage that fails is
    left out of the results: the build then runs it as an ordinary ``derived_unit`` from the store.

    Args:
        stage: the teacher stage.
        split_path: the split folder of the store.
        fp: the stage fingerprint.
        spec: the stage spec.
        shard: shard name.
        predicted: ``teacher_predict``'s result for the shard.
        chained: (derived stage, its fingerprint, its spec) of each derived stage to write from this one.

    Returns:
        The teacher unit's result (its seconds include the prediction's), then one per chained stage written.
    """
    t0 = time.perf_counter()
    ColumnWriter(split_path, stage, fp, spec).write_shard(shard, predicted.samples)
    results = [UnitResult(stage, shard, len(predicted.samples), predicted.seconds + time.perf_counter() - t0,
                          emptied=predicted.emptied)]
    for name, dfp, dspec in chained:
        t0 = time.perf_counter()
        try:
            samples = [(key, derived_members(name, members, dspec["params"], None, meta))
                       for (key, members), meta in zip(predicted.samples, predicted.metas, strict=True)]
            ColumnWriter(split_path, name, dfp, dspec).write_shard(shard, samples)
        except Exception as e:  # the build retries it as a derived unit reading the store
            log.warning("%s %s chained to %s failed (%s); it runs from the store", name, shard, stage, e)
            continue
        results.append(UnitResult(name, shard, len(samples), time.perf_counter() - t0))
    return results


def read_column_shard(split_path: str | os.PathLike, column: str, fp: str, shard: str,
                      exts: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Decode the samples of one shard of one column version, in tar order.

    Args:
        split_path: the split folder of the store.
        column: column name.
        fp: column version.
        shard: shard name.
        exts: members to decode (default: all).

    Returns:
        [(key, {ext: decoded value})].
    """
    col = get_column(column)
    path = shard_path(column_dir(split_path, column, fp), shard)
    samples: list[tuple[str, dict[str, Any]]] = []
    with tarfile.open(path, mode="r") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            if exts is None or ext in exts:
                samples[-1][1][ext] = decode_member(col.member(ext), tar.extractfile(info).read())
    return samples


def derived_unit(stage: str, split_path: str, fp: str, spec: Mapping[str, Any], shard: str, parent: str,
                 parent_fp: str, base_fp: str, vocab: Any = None) -> UnitResult:
    """Compute a derived column shard from its input column's shard on disk.

    Args:
        stage: the derived stage.
        split_path: the split folder of the store.
        fp: the stage fingerprint.
        spec: the stage spec (its ``params`` are the stage parameters).
        shard: shard name.
        parent: the input column.
        parent_fp: the input column version.
        base_fp: the base column version (read for meta.json by stages that need it).
        vocab: the split's ``shards.vocab.Vocabulary`` (tokens only; ``load_vocabulary``'s result, loaded
            once per build and shared by every tokens unit).

    Returns:
        The unit's result.
    """
    t0 = time.perf_counter()
    parents = read_column_shard(split_path, parent, parent_fp, shard)
    metas: list[Any] = [None] * len(parents)
    if get_stage(stage).reads_meta:
        base = read_column_shard(split_path, "base", base_fp, shard, exts=("meta.json",))
        if [k for k, _ in base] != [k for k, _ in parents]:
            raise RuntimeError(f"{shard}: {parent} and base hold different keys")
        metas = [m["meta.json"] for _, m in base]
    samples = [(key, derived_members(stage, members, spec["params"], vocab, meta))
               for (key, members), meta in zip(parents, metas)]
    ColumnWriter(split_path, stage, fp, spec).write_shard(shard, samples)
    return UnitResult(stage, shard, len(samples), time.perf_counter() - t0)


def load_vocabulary(path: str) -> Any:
    """Read a ``vocab.json`` (a unit of its own, so that every tokens unit shares one loaded copy)."""
    from shards.vocab import Vocabulary

    return Vocabulary.load(path)


def vocab_unit(split_path: str, caption_fp: str, shards: Sequence[str], glove: str, size: int,
               out_path: str) -> tuple[str, float]:
    """Build the split vocabulary from every caption of a caption column version and save it atomically.

    Args:
        split_path: the split folder of the store.
        caption_fp: the caption column version to read.
        shards: every shard of the split.
        glove: GloVe text file or gensim model name.
        size: vocabulary size.
        out_path: where vocab.json goes.

    Returns:
        (``out_path``, seconds spent).
    """
    from pipeline.samples import build_vocabulary, load_glove

    t0 = time.perf_counter()
    captions = (members["caption.json"] for shard in shards
                for _key, members in read_column_shard(split_path, "caption", caption_fp, shard))
    vocab = build_vocabulary(captions, load_glove(glove), size=size)
    vocab.save(out_path)  # atomically
    return str(out_path), time.perf_counter() - t0

