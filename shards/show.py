"""Contact sheet of one sample of the store: image with keypoints and skeleton, depth, normals, panoptic,
groups, text and the caption with its token words, as one PNG.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from shards.atomic import out_folder_problem
from shards.codecs import encode_jpeg, encode_png
from shards.errors import parse_json
from shards.geometry import content_mask
from shards.manifest import StoreError
from shards.reader import StoreReader
from shards.schema import KEY_DIGITS, VOCAB_NAME
from shards.streams import iter_tar, join, open_stream, read_bytes, split_name
from shards.taxonomy import GROUPS, JOINTS, LIMBS, PANOPTIC_CLASSES, PANOPTIC_VOID

TILE_MIN = 256  # tiles are drawn at least this large so labels stay readable
LEGEND_MAX = 8  # panoptic legend rows (the largest classes first)
_GROUP_COLORS = np.array([(0, 0, 0), (220, 20, 60), (0, 0, 142), (165, 42, 42), (255, 179, 0), (153, 69, 1),
                          (183, 130, 88), (206, 186, 171), (102, 102, 156), (116, 112, 0), (107, 142, 35)],
                         np.uint8)  # index = groups.png value (0 = unlabeled)
_PANOPTIC_COLORS = np.zeros((256, 3), np.uint8)
for _c in PANOPTIC_CLASSES:
    _PANOPTIC_COLORS[_c.contiguous_id] = _c.color


def normalize_key(key: str | int) -> str:
    """Accept ``397133``, ``"000000397133"`` or a member or file name such as ``"000000397133.jpg"``;
    raise ValueError for anything else."""
    s = str(key).strip().split(".", 1)[0]
    if not s.isdigit() or len(s) > KEY_DIGITS:
        raise ValueError(f"sample key {key!r} is not a COCO image id (up to {KEY_DIGITS} digits), e.g. 397133")
    return s.zfill(KEY_DIGITS)


def find_sample(root: str | os.PathLike, split: str, key: str | int) -> dict[str, Any]:
    """Decoded sample ``key`` with every active column (binary search over the shards' first keys).

    Raises:
        StoreError: no such key in the split.
    """
    key = normalize_key(key)
    reader = StoreReader(root, split)
    names = reader.manifest.shard_names
    base = reader.columns[0]

    def first_key(shard: str) -> str:
        with open_stream(reader.shard_location(base, shard)) as f:
            for name, _ in iter_tar(f):
                return split_name(name)[0]
        return ""

    lo, hi = 0, len(names) - 1  # find the last shard whose first key <= key
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if first_key(names[mid]) <= key:
            lo = mid
        else:
            hi = mid - 1
    if names:
        for sample in reader.read_shard(names[lo]):
            if sample["__key__"] == key:
                return sample
    raise StoreError(f"no sample with key {key} in split {split!r} of {root}")


def load_vocab_words(root: str | os.PathLike, split: str) -> list[str] | None:
    """The ``words`` list of the split's ``vocab.json``, or None when there is none."""
    try:
        return list(parse_json(read_bytes(join(root, split, VOCAB_NAME)))["words"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cv2():
    import cv2

    return cv2


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def _legend(img: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """Colour swatches with names in the bottom-left corner, on a dark box so they read over any picture."""
    cv2 = _cv2()
    if not entries:
        return img
    tile = img.shape[0]
    width = 24 + 7 * max(len(name) for name, _ in entries)
    top = tile - 6 - 14 * len(entries)
    dark = img[top:, :width].astype(np.float32) * 0.3
    img[top:, :width] = dark.astype(np.uint8)
    for i, (name, color) in enumerate(entries):
        y = top + 14 * (i + 1)
        cv2.rectangle(img, (4, y - 10), (14, y), tuple(int(c) for c in color), -1)
        cv2.rectangle(img, (4, y - 10), (14, y), (255, 255, 255), 1)
        cv2.putText(img, name, (18, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2 = _cv2()
    cv2.rectangle(tile, (0, 0), (8 + 9 * len(text), 20), (0, 0, 0), -1)
    cv2.putText(tile, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _fit(img: np.ndarray, tile: int, nearest: bool = False) -> np.ndarray:
    cv2 = _cv2()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[0] == tile:
        return img.copy()  # tiles are drawn on: never alias the sample's arrays
    return cv2.resize(img, (tile, tile), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def _missing(tile: int, what: str) -> np.ndarray:
    return _label(np.full((tile, tile, 3), 64, np.uint8), f"no {what}")


def _pose_tile(s: dict[str, Any], tile: int) -> np.ndarray:
    cv2 = _cv2()
    img = _fit(s["jpg"], tile)
    f = tile / s["jpg"].shape[0]
    pose = s.get("pose.json") or {}
    for region in pose.get("crowd", []):
        if "bbox" in region:
            x, y, w, h = (v * f for v in region["bbox"])
            cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), (255, 255, 0), 1)
    for person in pose.get("persons", []):
        kp = np.asarray(person["keypoints"], np.float32).reshape(len(JOINTS), 3)
        pts = [(int(round(x * f)), int(round(y * f))) for x, y, _ in kp]
        for limb in LIMBS:
            if kp[limb.child, 2] > 0 and kp[limb.parent, 2] > 0:
                side = JOINTS[limb.child].split("_")[0]  # left limbs cyan, right orange, to the nose white
                color = (255, 255, 255) if JOINTS[limb.parent] == "nose" else \
                    (0, 220, 255) if side == "left" else (255, 150, 0)
                cv2.line(img, pts[limb.child], pts[limb.parent], color, 2, cv2.LINE_AA)
        for p, v in zip(pts, kp[:, 2]):
            if v > 0:
                cv2.circle(img, p, 3, (0, 255, 0) if v == 2 else (255, 255, 0), -1, cv2.LINE_AA)
    n = len(pose.get("persons", []))
    return _label(img, f"image + {n} {'person' if n == 1 else 'people'}")


def _depth_tile(s: dict[str, Any], tile: int) -> np.ndarray:
    cv2 = _cv2()
    depth = s["depth.png"]
    colored = cv2.applyColorMap((depth >> 8).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()
    if "meta.json" in s:  # mask the padding by geometry: depth 0 is also a valid (farthest) pixel
        colored = _mask_letterbox(colored, s["meta.json"])
    else:
        colored[depth == 0] = 0
    kind = (s.get("depth.json") or {}).get("kind", "depth")
    return _label(_fit(colored, tile), f"depth ({kind}, {'far' if kind == 'metric' else 'near'} = red)")


def _text_tile(s: dict[str, Any], tile: int) -> np.ndarray:
    cv2 = _cv2()
    base = s["jpg"] if "jpg" in s else np.zeros(s["text.png"].shape + (3,), np.uint8)
    img = (base.astype(np.float32) * 0.4).astype(np.uint8)
    img[s["text.png"] > 0] = (255, 255, 0)
    img = _fit(img, tile)
    f = tile / base.shape[0]
    for poly in (s.get("text.json") or {}).get("polygons", []):
        pts = (np.asarray(poly, np.float32) * f).round().astype(np.int32)
        cv2.polylines(img, [pts], True, (255, 0, 255), 1, cv2.LINE_AA)
    return _label(img, f"text ({_plural(len((s.get('text.json') or {}).get('polygons', [])), 'region')})")


def _groups_tile(s: dict[str, Any], tile: int) -> np.ndarray:
    groups = s["groups.png"]
    img = _fit(_GROUP_COLORS[np.minimum(groups, len(_GROUP_COLORS) - 1)], tile, nearest=True)
    present = [int(v) for v in np.unique(groups) if 0 < v <= len(GROUPS)]
    _legend(img, [(GROUPS[v - 1], tuple(_GROUP_COLORS[v])) for v in present])
    return _label(img, "groups")


def _panoptic_tile(s: dict[str, Any], tile: int) -> np.ndarray:
    classes = s["panoptic.png"]
    img = _fit(_PANOPTIC_COLORS[classes], tile, nearest=True)
    ids, counts = np.unique(classes[classes != PANOPTIC_VOID], return_counts=True)
    names = {c.contiguous_id: c.name for c in PANOPTIC_CLASSES}
    order = [int(i) for i in ids[np.argsort(-counts, kind="stable")] if int(i) in names]
    entries = [(names[i], tuple(_PANOPTIC_COLORS[i])) for i in order[:LEGEND_MAX]]
    if len(order) > LEGEND_MAX:
        entries.append((f"+{len(order) - LEGEND_MAX} more", (0, 0, 0)))
    _legend(img, entries)
    return _label(img, f"panoptic ({_plural(len(order), 'class')})")


def _mask_letterbox(img: np.ndarray, meta: dict[str, Any] | None) -> np.ndarray:
    """Black out the letterbox padding (no image there, so its values mean nothing)."""
    mask = content_mask(meta, img.shape)
    out = np.zeros_like(img)
    out[mask] = img[mask]
    return out


def _caption_lines(s: dict[str, Any], words: list[str] | None) -> list[str]:
    meta = s.get("meta.json") or {}
    lines = [f"key {s['__key__']}  shard {s['__shard__']}  file {meta.get('file_name', '?')}  "
             f"orig {meta.get('orig_size', '?')}"]
    cap = s.get("caption.json")
    if cap is not None:
        texts = cap.get("captions") or ([cap["text"]] if "text" in cap else [])
        for t in texts[:2]:
            lines += textwrap.wrap(f"caption ({cap.get('source', '?')}): {t}", 90)
    tokens = s.get("tokens.json") or {}
    ids = tokens.get("ids")
    if ids is not None:
        if words is not None:
            toks = [words[i] if 0 <= i < len(words) else f"#{i}?" for i in ids]
        elif "words" in tokens:  # the pipeline also stores the words; used when vocab.json is absent
            toks = list(tokens["words"])
        else:
            toks = [f"#{i}" for i in ids]
        lines += textwrap.wrap("tokens: " + " ".join(toks) + ("" if words is not None else "  (no vocab.json)"), 90)
    return lines


def label_tile(img: np.ndarray, tile: int, text: str) -> np.ndarray:
    """``img`` fitted to a ``tile`` square with ``text`` in its top-left corner."""
    return _label(_fit(img, tile, nearest=img.dtype == np.uint8 and img.ndim == 2), text)


def lines_tile(lines: list[str], tile: int, title: str) -> np.ndarray:
    """Lines of text, wrapped, on a dark ``tile`` square titled ``title``."""
    cv2 = _cv2()
    img = np.full((tile, tile, 3), 24, np.uint8)
    wrapped = [w for line in lines for w in textwrap.wrap(line, max(12, tile // 7))] or ["(none)"]
    for i, line in enumerate(wrapped[: (tile - 50) // 16]):
        cv2.putText(img, line, (6, 60 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return _label(img, title)


def column_tile(sample: dict[str, Any], column: str, tile: int, title: str | None = None) -> np.ndarray:
    """The tile of one column of a decoded sample, as the contact sheet draws it (captions and tokens as text);
    ``title`` is written above the column's own label."""
    s = sample
    if column == "base":
        img = _pose_tile(s, tile) if "jpg" in s else _missing(tile, "image")
    elif column == "pose":
        img = _pose_tile(s, tile) if "jpg" in s and "pose.json" in s else _missing(tile, "pose")
    elif column == "depth":
        img = _depth_tile(s, tile) if "depth.png" in s else _missing(tile, "depth")
    elif column == "normals":
        img = (_label(_fit(_mask_letterbox(s["normals.png"], s.get("meta.json")), tile), "normals")
               if "normals.png" in s else _missing(tile, "normals"))
    elif column == "panoptic":
        img = _panoptic_tile(s, tile) if "panoptic.png" in s else _missing(tile, "panoptic")
    elif column == "groups":
        img = _groups_tile(s, tile) if "groups.png" in s else _missing(tile, "groups")
    elif column == "text":
        img = _text_tile(s, tile) if "text.png" in s else _missing(tile, "text")
    elif column == "caption":
        img = lines_tile(list((s.get("caption.json") or {}).get("captions", [])), tile, "captions")
    elif column == "tokens":
        img = lines_tile([" ".join(str(w) for w in (s.get("tokens.json") or {}).get("words", []))], tile, "tokens")
    else:
        raise ValueError(f"unknown column {column!r}")
    if title:
        cv2 = _cv2()
        cv2.rectangle(img, (0, 20), (8 + 9 * len(title), 40), (0, 0, 96), -1)
        cv2.putText(img, title, (4, 35), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def contact_sheet(sample: dict[str, Any], vocab_words: list[str] | None = None) -> np.ndarray:
    """Draw one decoded sample as a (H, W, 3) uint8 RGB contact sheet; absent columns get grey tiles."""
    cv2 = _cv2()
    size = next((v.shape[0] for v in sample.values() if isinstance(v, np.ndarray) and v.ndim >= 2), TILE_MIN)
    tile = max(size, TILE_MIN)
    s = sample
    tiles = [column_tile(s, c, tile) for c in ("base", "depth", "normals", "panoptic", "groups", "text")]
    grid = np.vstack([np.hstack(tiles[:3]), np.hstack(tiles[3:])])
    lines = _caption_lines(s, vocab_words)
    band = np.full((12 + 20 * len(lines), grid.shape[1], 3), 24, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (8, 22 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([grid, band])


SHEET_SUFFIXES = (".png", ".jpg", ".jpeg")  # the formats a contact sheet is written in, chosen by suffix


def check_sheet_path(out: str | os.PathLike) -> Path:
    """``out`` as a Path; a suffix other than .png, .jpg or .jpeg is a ValueError (no PNG bytes in a .gif)."""
    out = Path(out)
    if out.suffix.lower() not in SHEET_SUFFIXES:
        raise ValueError(f"{out}: a contact sheet is written as PNG or JPEG; give --out a name ending in "
                         f"{', '.join(SHEET_SUFFIXES)}")
    problem = f"{out} is a folder" if out.is_dir() else out_folder_problem(out.parent)
    if problem:
        raise ValueError(f"cannot write --out {out}: {problem}")
    return out


def show_sample(root: str | os.PathLike, split: str, key: str | int, out: str | os.PathLike) -> Path:
    """Find sample ``key`` and write its contact sheet to ``out`` (JPEG for .jpg/.jpeg, PNG for .png); returns
    the path. Raises ValueError for another suffix."""
    out = check_sheet_path(out)
    sample = find_sample(root, split, key)
    sheet = contact_sheet(sample, load_vocab_words(root, split))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(sheet) if out.suffix.lower() == ".png" else encode_jpeg(sheet, 92))
    return out
