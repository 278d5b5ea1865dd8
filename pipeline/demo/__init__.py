"""The demo data generator, in a corner of its own: builds the demo COCO root deterministically (images, COCO json
annotations, panoptic PNGs, a tiny GloVe file); its scenes and figures are `scenes` and `figures` beside it.

``make_demo(out_dir)`` writes ``train2017/``, ``val2017/``, ``annotations/`` and ``glove/glove.demo.300d.txt``.
train2017 also holds deliberately odd files that must decode (grayscale, CMYK, PNG data named .jpg, 16-bit
PNG, EXIF-rotated) and broken ones the base stage must reject (truncated JPEG, empty file, missing file).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.demo import figures, scenes
from pipeline.demo.scenes import Scene
from pipeline.targets.tokens import tokenise
from shards.taxonomy import CLASS_BY_NAME, JOINTS, PANOPTIC_CLASSES

GLOVE_FILE = "glove/glove.demo.300d.txt"
MARKER = "DEMO.txt"  # make_demo only replaces folders of a root that carries this file
GLOVE_DIM = 300
#: Caption words left out of the demo GloVe file on purpose: they must be dropped as "no vector".
OMITTED_GLOVE_WORDS = ("crema", "kickstand")
#: Extra words in the demo GloVe file that no caption uses (a real GloVe file has many).
EXTRA_GLOVE_WORDS = ("king", "queen", "computer", "music", "river", "bridge", "train", "horse", "pizza",
                     "umbrella", "laptop", "phone", "boat", "airport", "kitchen", "window")
#: What the base stage must say about each bad file of train2017 (file kind -> rejection reason).
REJECT_REASONS = {"truncated": "truncated", "empty": "empty", "missing": "missing"}
JPEG_QUALITY = 90
COCO_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
                 (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))

# (image id, scene, file kind); listed unsorted on purpose: the reader must sort by id.
TRAIN: tuple[tuple[int, Callable[[], Scene], str], ...] = (
    (397133, scenes.astronaut, "jpeg"),
    (139, scenes.coffee, "jpeg"),
    (285, scenes.chelsea, "jpeg"),
    (632, scenes.rocket, "cmyk"),
    (724, lambda: scenes.motorcycle("left"), "jpeg"),
    (776, lambda: scenes.motorcycle("right"), "png16"),
    (785, scenes.grace_hopper, "jpeg"),
    (802, scenes.cameraman, "gray"),
    (872, scenes.page, "jpeg"),
    (885, scenes.handwriting, "png-in-jpg"),
    (1000, figures.park, "jpeg"),
    (1268, figures.street, "jpeg"),
    (1296, figures.beach, "exif"),
    (1353, lambda: scenes.flipped(figures.street()), "truncated"),
    (1425, lambda: scenes.flipped(scenes.chelsea()), "empty"),
    (1490, lambda: scenes.flipped(figures.park()), "missing"),
)
VAL: tuple[tuple[int, Callable[[], Scene], str], ...] = (
    (42, figures.snow, "jpeg"),
    (73, lambda: scenes.flipped(scenes.astronaut()), "jpeg"),
    (74, lambda: scenes.flipped(scenes.coffee()), "jpeg"),
    (133, lambda: scenes.flipped(scenes.chelsea()), "jpeg"),
    (136, lambda: scenes.flipped(scenes.grace_hopper()), "jpeg"),
)
SPLITS = {"train2017": TRAIN, "val2017": VAL}


def make_demo(out_dir: str | Path) -> Path:
    """Write the demo COCO root (deterministic: the same bytes on every run).

    Args:
        out_dir: target folder; its ``train2017``, ``val2017``, ``annotations`` and ``glove`` subfolders are
            replaced when an earlier ``make_demo`` wrote them (never those of another COCO tree).

    Returns:
        The root path.

    Raises:
        FileExistsError: ``out_dir`` holds such folders that make_demo did not write.
    """
    root = Path(out_dir)
    subfolders = ("train2017", "val2017", "annotations", "glove", "videos")
    if not (root / MARKER).is_file() and any((root / sub).exists() for sub in subfolders):
        raise FileExistsError(f"{root} already holds a COCO-like tree that make_demo did not write; "
                              "choose an empty --out folder")
    for sub in subfolders:
        shutil.rmtree(root / sub, ignore_errors=True)
    (root / "annotations").mkdir(parents=True)
    all_captions: list[str] = []
    for split, entries in SPLITS.items():
        (root / split).mkdir()
        (root / "annotations" / f"panoptic_{split}").mkdir()
        builder = _SplitBuilder(root, split)
        for image_id, make_scene, kind in entries:
            scene = make_scene()
            builder.add(image_id, scene, kind)
            all_captions.extend(scene.captions)
        builder.write()
    _write_glove(root / GLOVE_FILE, all_captions)
    write_pan_video(root / "videos" / "pan.avi", root / "val2017")
    (root / MARKER).write_text("written by pipeline.demo.make_demo; rebuilt in place on every run\n")
    return root


def write_pan_video(path: Path, photos: Path, frames: int = 24, fps: float = 8.0) -> Path:
    """A short MJPEG video panning across the first demo photo of ``photos`` (a camera moving along a scene):
    the demo's video source. Deterministic bytes."""
    import cv2

    photo = next(cv2.imread(str(p)) for p in sorted(photos.glob("*.jpg")) if cv2.imread(str(p)) is not None)
    h, w = photo.shape[:2]
    big = cv2.resize(photo, (w * 2, h * 2), interpolation=cv2.INTER_LINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(frames):  # the window slides from the top-left quarter to the bottom-right one
        x, y = round(w * i / (frames - 1)), round(h * i / (frames - 1))
        out.write(np.ascontiguousarray(big[y:y + h, x:x + w]))
    out.release()
    return path


def bad_files(split: str = "train2017") -> dict[str, str]:
    """File name -> expected rejection reason of the demo's broken files."""
    return {file_name(i, kind): REJECT_REASONS[kind] for i, _, kind in SPLITS[split] if kind in REJECT_REASONS}


def file_name(image_id: int, kind: str) -> str:
    return f"{image_id:012d}.{'png' if kind == 'png16' else 'jpg'}"


def encode_image(image: np.ndarray, kind: str) -> bytes:
    """The file bytes of an RGB image for each demo file kind."""
    import cv2
    from PIL import Image

    if kind in ("jpeg", "truncated"):
        ok, buf = cv2.imencode(".jpg", image[:, :, ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        data = buf.tobytes()
        return data[: len(data) * 11 // 20] if kind == "truncated" else data
    if kind == "gray":
        ok, buf = cv2.imencode(".jpg", image[:, :, 0].copy(), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        return buf.tobytes()
    out = io.BytesIO()
    if kind == "cmyk":
        Image.fromarray(image).convert("CMYK").save(out, "JPEG", quality=JPEG_QUALITY)
    elif kind == "png-in-jpg":
        Image.fromarray(image).save(out, "PNG")
    elif kind == "png16":
        ok, buf = cv2.imencode(".png", (image[:, :, ::-1].astype(np.uint16) * 257))
        return buf.tobytes()
    elif kind == "exif":  # pixels stored rotated; orientation 6 says "rotate 90 degrees clockwise to display"
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(np.ascontiguousarray(np.rot90(image, 1))).save(out, "JPEG", quality=JPEG_QUALITY,
                                                                       exif=exif.tobytes())
    elif kind == "empty":
        return b""
    else:
        raise ValueError(f"unknown demo file kind {kind!r}")
    return out.getvalue()


class _SplitBuilder:
    """Accumulates the four annotation files of one split while images are added."""

    def __init__(self, root: Path, split: str) -> None:
        self.root, self.split = root, split
        self.images: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []
        self.keypoints: list[dict[str, Any]] = []
        self.captions: list[dict[str, Any]] = []
        self.panoptic: list[dict[str, Any]] = []
        self.next_id = 1

    def _ann_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(self, image_id: int, scene: Scene, kind: str) -> None:
        h, w = scene.image.shape[:2]
        name = file_name(image_id, kind)
        self.images.append({"id": image_id, "file_name": name, "width": w, "height": h, "license": 0})
        if kind != "missing":
            (self.root / self.split / name).write_bytes(encode_image(scene.image, kind))
        for text in scene.captions:
            self.captions.append({"id": self._ann_id(), "image_id": image_id, "caption": text})
        if kind in ("empty", "missing"):  # broken files still get captions, as real data would
            return
        seg_ids, segments = _paint(scene)
        png_name = f"{image_id:012d}.png"
        _write_png_rgb(self.root / "annotations" / f"panoptic_{self.split}" / png_name, seg_ids)
        info = []
        for seg_id, region in segments:
            mask = seg_ids == seg_id
            bbox, area = _bbox(mask), int(mask.sum())
            cls = CLASS_BY_NAME[region.category]
            info.append({"id": seg_id, "category_id": cls.coco_id, "iscrowd": int(region.iscrowd),
                         "bbox": bbox, "area": area})
            if not cls.isthing:
                continue
            ann = {"id": self._ann_id(), "image_id": image_id, "category_id": cls.coco_id, "bbox": bbox,
                   "area": area, "iscrowd": int(region.iscrowd),
                   "segmentation": _rle(mask) if region.iscrowd else _polygons(mask)}
            self.instances.append(ann)
            if region.category == "person":
                kps = region.keypoints or tuple((0.0, 0.0, 0) for _ in JOINTS)
                self.keypoints.append({**ann, "keypoints": [v for p in kps for v in (p[0], p[1], int(p[2]))],
                                       "num_keypoints": sum(1 for p in kps if p[2] > 0)})
        self.panoptic.append({"image_id": image_id, "file_name": png_name, "segments_info": info})

    def write(self) -> None:
        things = [c for c in PANOPTIC_CLASSES if c.isthing]
        thing_cats = [{"id": c.coco_id, "name": c.name, "supercategory": c.group.lower()} for c in things]
        person_cat = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(JOINTS),
                       "skeleton": [list(s) for s in COCO_SKELETON]}]
        pan_cats = [{"id": c.coco_id, "name": c.name, "supercategory": c.group.lower(), "isthing": int(c.isthing),
                     "color": list(c.color)} for c in PANOPTIC_CLASSES]
        info = {"description": "ymap-distill demo dataset", "version": "1.0", "year": 2017}
        base = {"info": info, "licenses": [{"id": 0, "name": "see pipeline/demo/scenes.py"}], "images": self.images}
        for kind, anns, cats in (("instances", self.instances, thing_cats),
                                 ("person_keypoints", self.keypoints, person_cat),
                                 ("captions", self.captions, None),
                                 ("panoptic", self.panoptic, pan_cats)):
            data = {**base, "annotations": anns, **({"categories": cats} if cats is not None else {})}
            path = self.root / "annotations" / f"{kind}_{self.split}.json"
            path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


def _paint(scene: Scene) -> tuple[np.ndarray, list[tuple[int, Any]]]:
    """Paint the regions in order into an (H, W) segment-id map; stuff of one class shares a segment."""
    import cv2

    h, w = scene.image.shape[:2]
    seg = np.zeros((h, w), np.int32)
    order: list[tuple[int, Any]] = []
    stuff_ids: dict[str, int] = {}
    for region in scene.regions:
        if region.mask is not None:
            mask = region.mask
        else:
            m = np.zeros((h, w), np.uint8)
            cv2.fillPoly(m, [np.rint(np.asarray(region.polygon)).astype(np.int32)], 1)
            mask = m > 0
        if CLASS_BY_NAME[region.category].isthing:
            seg_id = len(order) + 1
            order.append((seg_id, region))
        elif region.category in stuff_ids:
            seg_id = stuff_ids[region.category]
        else:
            seg_id = stuff_ids[region.category] = len(order) + 1
            order.append((seg_id, region))
        seg[mask] = seg_id
    present = set(np.unique(seg).tolist())
    return seg, [(i, r) for i, r in order if i in present]


def _write_png_rgb(path: Path, seg_ids: np.ndarray) -> None:
    """COCO panoptic PNG: id = R + 256 G + 256^2 B."""
    import cv2

    rgb = np.stack([seg_ids % 256, seg_ids // 256 % 256, seg_ids // 65536], axis=-1).astype(np.uint8)
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1].copy())
    path.write_bytes(buf.tobytes())


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _polygons(mask: np.ndarray) -> list[list[float]]:
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[float(v) + 0.5 for v in c.reshape(-1)] for c in contours if len(c) >= 3]


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE (column-major runs, starting with a run of zeros), as crowd annotations use."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def glove_vector(word: str) -> np.ndarray:
    """Deterministic stand-in vector of a word (GloVe-like magnitudes, seeded by the word's sha256)."""
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(0.0, 0.4, GLOVE_DIM).astype(np.float32)


def _write_glove(path: Path, captions: list[str]) -> None:
    words = {w for text in captions for w in tokenise(text)} | set(EXTRA_GLOVE_WORDS)
    words -= set(OMITTED_GLOVE_WORDS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for word in sorted(words):
            f.write(word + " " + " ".join(f"{v:.5f}" for v in glove_vector(word)) + "\n")
