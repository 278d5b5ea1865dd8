"""Stage sample functions: build one sample's column members from a COCO record or a teacher prediction.

Pure numpy functions (no I/O besides reading the image in ``base_sample``); the stage runner encodes the
returned members with ``shards.codecs`` and writes them. ``meta`` is always the base sample's
``meta.json`` dict, which carries the letterbox geometry.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline.coco import ImageRecord
from shards.images import MAX_IMAGE_PIXELS, RejectedImage, decode_image_bytes, read_image_bytes
from pipeline.targets.depth import quantise_depth
from pipeline.targets.groups import groups_from_classes
from pipeline.targets.normals import DEFAULT_NORMALS_SCALE, normals_from_depth
from pipeline.targets.text import rasterise_polygons
from pipeline.targets.tokens import (count_words, glove_array, image_token_ids, load_glove, load_stopwords,
                                     vocabulary_from_counts)
from shards.geometry import Letterbox, letterbox_image, map_continuous, map_labels
from shards.schema import DEFAULT_STORE_SIZE
from shards.taxonomy import VOCAB_SIZE
from shards.vocab import Vocabulary

__all__ = [
    "RejectedImage", "decode_image", "base_sample", "pose_sample", "depth_sample", "normals_sample", "panoptic_sample",
    "groups_sample", "text_sample", "caption_sample", "tokens_sample", "build_vocabulary", "load_glove",
]


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB with its EXIF orientation applied.

    Raises:
        RejectedImage: missing, empty, truncated or undecodable file (``.reason`` says which).
    """
    return decode_image_bytes(read_image_bytes(path), str(path))[0]


def _as_record(record: ImageRecord | Mapping[str, Any]) -> ImageRecord:
    return record if isinstance(record, ImageRecord) else ImageRecord.from_record(dict(record))


def check_image_path(rec: ImageRecord) -> None:
    """Reject a record whose image is not a regular file inside its split's image folder: an annotation file is
    data and never points the build at another file (``../`` or an absolute ``file_name``, a symlink, a FIFO or a
    device, which would be read without end).

    Raises:
        RejectedImage: ``outside-folder`` or ``not-a-file``; a missing file is left to the reader (``missing``).
    """
    name = PurePosixPath(rec.file_name.replace("\\", "/"))
    if not rec.file_name or name.is_absolute() or ".." in name.parts or PureWindowsPath(rec.file_name).drive:
        raise RejectedImage("outside-folder", f"file_name {rec.file_name[:200]!r} leaves the split's image folder")
    try:
        mode = os.lstat(rec.path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise RejectedImage("not-a-file", f"{rec.path} is a symlink or not a regular file")


def _image_in_annotation_frame(rec: ImageRecord, max_pixels: int) -> np.ndarray:
    """Decode the record's image in the frame its annotations use (oriented, else as stored)."""
    check_image_path(rec)
    expected = (rec.width, rec.height) if rec.width > 0 and rec.height > 0 else None
    oriented, raw = decode_image_bytes(read_image_bytes(rec.path), rec.path, expected, max_pixels)
    if expected is None:
        return oriented
    for image in (oriented, raw):
        if image is not None and image.shape[:2] == (rec.height, rec.width):
            return image
    h, w = oriented.shape[:2]
    raise RejectedImage("size-mismatch", f"{rec.path} decodes to {w}x{h} but its annotations say "
                                         f"{rec.width}x{rec.height}")


def base_sample(record: ImageRecord | Mapping[str, Any], size: int = DEFAULT_STORE_SIZE,
                max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[dict[str, Any], np.ndarray]:
    """Decode and letterbox one image.

    Args:
        record: the COCO record (an ImageRecord or its ``to_record()`` dict).
        size: store side S.
        max_pixels: an image with more pixels is rejected as ``too-large`` before it is decoded.

    Returns:
        ``(members, image)``: members ``{"jpg": (S, S, 3) uint8, "meta.json": dict}`` and the full-resolution RGB
        image the teachers should see (the keypoints are the pose stage's, :func:`pose_sample`).

    Raises:
        RejectedImage: the image cannot be used; ``.reason`` is the rejected.jsonl reason.
    """
    rec = _as_record(record)
    if rec.frame is not None:
        from pipeline.sources import read_video_frame

        check_image_path(rec)
        image = read_video_frame(rec.path, rec.frame, max_pixels)
    else:
        image = _image_in_annotation_frame(rec, max_pixels)
    h, w = image.shape[:2]
    box = Letterbox.fit(w, h, size)
    meta = {"id": rec.image_id, "file_name": rec.file_name, **box.to_meta()}
    if rec.frame is not None:  # where in which video (file_name is "<video>@<frame>")
        meta.update(video=rec.file_name.rpartition("@")[0], frame=rec.frame, time=rec.time)
    return {"jpg": letterbox_image(image, box), "meta.json": meta}, image


def pose_sample(pred: Mapping[str, Any], meta: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Pose teacher output (persons and crowd regions in original pixels) -> ``pose.json`` in store pixels, with
    the teacher's name as its ``source`` (``shards.pose`` describes the structure).

    Joints come as COCO writes them, in pixel indices (x = 3 is the centre of pixel 3); the store's coordinates
    are continuous (pixel i covers [i, i + 1), ``shards.geometry``), so a joint moves by half a pixel on the way.
    Boxes and crowd regions are continuous in COCO already."""
    box = Letterbox.from_meta(meta)
    return {"pose.json": {"persons": [_person_to_store(p, box) for p in pred.get("persons", [])],
                          "crowd": [_crowd_to_store(c, box) for c in pred.get("crowd", [])], "source": source}}


def _person_to_store(person: Mapping[str, Any], box: Letterbox) -> dict[str, Any]:
    kps = np.asarray(person["keypoints"], np.float64).reshape(-1, 3)
    xy = box.to_store(kps[:, :2] + 0.5)  # pixel index -> continuous
    keypoints = [[round(float(x), 3), round(float(y), 3), int(v)] if v > 0 else [0.0, 0.0, 0]
                 for (x, y), v in zip(xy, kps[:, 2])]
    out = {"keypoints": keypoints, "bbox": [round(v, 3) for v in box.bbox_to_store(person["bbox"])]}
    if "score" in person:  # a model teacher's: the person's detection score and each joint's confidence
        out["score"] = round(float(person["score"]), 4)
        out["keypoint_scores"] = [round(float(s), 4) for s in person["keypoint_scores"]]
    return out


def _crowd_to_store(crowd: Mapping[str, Any], box: Letterbox) -> dict[str, Any]:
    seg = crowd.get("segmentation")
    bbox = [round(v, 3) for v in box.bbox_to_store(crowd["bbox"])]
    if not seg:  # a region known by its box alone
        return {"bbox": bbox}
    if isinstance(seg, dict):  # RLE at the original size -> RLE at store size
        from pycocotools import mask as mask_utils

        rle = dict(seg)
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, box.orig_h, box.orig_w)
        elif isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
        with warnings.catch_warnings():  # pycocotools' decode trips numpy 2's copy-keyword deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_utils.decode(rle)
        mask = map_labels(decoded.astype(np.uint8), box, fill=0)
        out = mask_utils.encode(np.asfortranarray(mask))
        segmentation: Any = {"size": [int(s) for s in out["size"]], "counts": out["counts"].decode()}
    else:  # polygons [x0, y0, x1, y1, ...]
        segmentation = [[round(float(v), 3) for v in box.to_store(np.asarray(p, np.float64)).ravel()]
                        for p in seg]
    return {"bbox": bbox, "segmentation": segmentation}


def depth_sample(pred: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Depth teacher output (original resolution) -> ``depth.png`` uint16 and ``depth.json``."""
    box = Letterbox.from_meta(meta)
    depth = map_continuous(np.asarray(pred["depth"], np.float32), box)
    content, info = quantise_depth(depth[box.content], kind=str(pred.get("kind", "relative")))
    depth_u16 = np.zeros(depth.shape, np.uint16)  # the letterbox border is stored as 0
    depth_u16[box.content] = content
    return {"depth.png": depth_u16, "depth.json": info}


def normals_sample(depth_png: np.ndarray, scale: float = DEFAULT_NORMALS_SCALE,
                   meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``depth.png`` -> ``normals.png``; with ``meta`` the letterbox border gets the flat normal."""
    valid = Letterbox.from_meta(meta).valid_mask() if meta is not None else None
    return {"normals.png": normals_from_depth(np.asarray(depth_png), scale, valid)}


def panoptic_sample(pred: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Panoptic teacher output (contiguous ids at original resolution) -> ``panoptic.png`` (255 = void)."""
    classes = np.asarray(pred["classes"])
    if classes.dtype != np.uint8:
        raise ValueError(f"panoptic 'classes' must be uint8 contiguous ids, got {classes.dtype}")
    return {"panoptic.png": map_labels(classes, Letterbox.from_meta(meta), fill=255)}


def groups_sample(panoptic_png: np.ndarray) -> dict[str, Any]:
    """``panoptic.png`` -> ``groups.png`` (0 = unlabeled, 1..10)."""
    return {"groups.png": groups_from_classes(np.asarray(panoptic_png))}


def text_sample(pred: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Text teacher polygons (original pixels) -> ``text.png`` mask and ``text.json`` (store pixels)."""
    box = Letterbox.from_meta(meta)
    polygons = [box.to_store(np.asarray(p, np.float64).reshape(-1, 2)) for p in pred.get("polygons", [])]
    scores = [float(s) for s in pred.get("scores", [1.0] * len(polygons))]
    if len(scores) != len(polygons):
        raise ValueError(f"text prediction has {len(polygons)} polygons but {len(scores)} scores")
    info = {"polygons": [[[round(float(x), 2), round(float(y), 2)] for x, y in p] for p in polygons],
            "scores": [round(s, 4) for s in scores]}
    return {"text.png": rasterise_polygons(polygons, box.size), "text.json": info}


def caption_sample(pred: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Caption teacher output -> ``caption.json`` ``{"captions": [...], "source": source}``."""
    return {"caption.json": {"captions": [str(c) for c in pred.get("captions", [])], "source": source}}


def tokens_sample(caption_json: Mapping[str, Any], vocab: Vocabulary) -> dict[str, Any]:
    """``caption.json`` + the split's vocabulary -> ``tokens.json`` (up to 32 ids) and ``glove.npy`` (8, 300)."""
    ids = image_token_ids(caption_json.get("captions", []), vocab)
    return {"tokens.json": {"ids": ids, "words": [vocab.words[i] for i in ids]},
            "glove.npy": glove_array(ids, vocab)}


def build_vocabulary(caption_jsons: Iterable[Mapping[str, Any]], glove: Any,
                     stopwords: str | os.PathLike | Iterable[str] | None = None,
                     size: int = VOCAB_SIZE) -> Vocabulary:
    """The vocabulary of a (train) split: its ``size`` most frequent content words with normalised GloVe.

    Args:
        caption_jsons: the split's ``caption.json`` dicts.
        glove: GloVe vectors (``load_glove``'s result or any mapping word -> (300,) vector).
        stopwords: None (the default list of DESIGN 5.4), a stop-word file, or the words themselves.
        size: vocabulary size.

    Returns:
        The Vocabulary (save it as the split's ``vocab.json``; val and test reuse train's).
    """
    counts = count_words(caption_jsons, glove, load_stopwords(stopwords))
    return vocabulary_from_counts(counts, glove, size)
