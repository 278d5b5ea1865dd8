"""Realistic synthetic stores (numpy only) for tests, benchmarks and demos: every column, activated.

Each sample is a small scene in a letterbox: stuff regions split at a horizon, a few thing objects (people
with COCO keypoints among them), scene text; the photo, depth, normals, panoptic, groups and text members
all describe the same scene, so a contact sheet or a student loader sees consistent targets.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from shards.atomic import atomic_write_json
from shards.manifest import Manifest, ShardEntry, activate_column, save_manifest
from shards.schema import COLUMNS, VOCAB_NAME, key_of, shard_name
from shards.taxonomy import CLASS_BY_NAME, GLOVE_DIM, GROUPS, MAX_TOKEN_IDS, NUM_TOKENS, PANOPTIC_VOID
from shards.writer import ColumnWriter

_ORIG_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (427, 640), (640, 640))
_SKY = ("sky-other-merged", "wall-other-merged", "building-other-merged", "tree-merged")
_GROUND = ("grass-merged", "road", "floor-wood", "sand", "pavement-merged")
_THINGS = ("person", "person", "person", "dog", "car", "bicycle", "chair", "bottle", "cat", "bench", "tv")
# Where each joint sits in a standing person's box (x, y as fractions of the box), COCO order.
_POSE = np.array([
    (0.50, 0.08), (0.55, 0.06), (0.45, 0.06), (0.60, 0.08), (0.40, 0.08),
    (0.70, 0.24), (0.30, 0.24), (0.80, 0.40), (0.20, 0.40), (0.85, 0.55), (0.15, 0.55),
    (0.62, 0.56), (0.38, 0.56), (0.63, 0.77), (0.37, 0.77), (0.64, 0.96), (0.36, 0.96),
])
_SCENE_WORDS = ("standing", "sitting", "street", "outside", "room", "sunny", "large", "small", "white",
                "green", "playing", "walking", "parked", "view", "grass", "sky", "road", "building", "tree",
                "sand", "floor", "wall", "pavement")


def _vocabulary(seed: int) -> tuple[list[str], list[int], float, np.ndarray]:
    """A small caption vocabulary: words, descending counts, the scale, normalised (V, 300) vectors."""
    words = sorted({n.split("-")[0] for n in _THINGS} | set(_SCENE_WORDS) | {"man", "woman", "people"})
    rng = np.random.default_rng([seed, 7])
    counts = sorted((int(c) for c in rng.integers(50, 5000, len(words))), reverse=True)
    raw = rng.normal(0.0, 0.4, (len(words), GLOVE_DIM)).astype(np.float32)
    scale = float(1.0 / np.abs(raw).max())
    return words, counts, scale, (raw * scale).round(6).astype(np.float32)  # as stored in vocab.json


def write_vocab_json(split_path: str | os.PathLike, seed: int = 0) -> dict[str, Any]:
    """Write the synthetic ``vocab.json`` (DESIGN 5.4 format of ``shards.vocab``) beside the manifest; returns it."""
    words, counts, scale, vectors = _vocabulary(seed)
    doc = {"format": "ymap-vocab/1", "dim": GLOVE_DIM, "words": words, "counts": counts, "scale": scale,
           "vectors": vectors.tolist()}
    atomic_write_json(Path(split_path) / VOCAB_NAME, doc)
    return doc


def _letterbox(rng: np.random.Generator, size: int) -> tuple[tuple[int, int], float, tuple[int, int], tuple]:
    w, h = _ORIG_SIZES[int(rng.integers(len(_ORIG_SIZES)))]
    scale = size / max(w, h)
    cw, ch = round(w * scale), round(h * scale)
    ox, oy = (size - cw) // 2, (size - ch) // 2
    return (w, h), scale, (ox, oy), (slice(oy, oy + ch), slice(ox, ox + cw))


def _sobel(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(d, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def normals_from_depth(depth: np.ndarray, scale: float = 240.0,
                       content: tuple[slice, slice] | None = None) -> np.ndarray:
    """DESIGN 5.2 normals of a uint16 depth map: (S, S, 3) uint8 ``round((n + 1) * 127.5)``.

    With ``content`` (the letterbox's (rows, cols)) the Sobel sees only the content, edges replicated,
    and the border gets the flat normal (0, 0, 1), as the pipeline's normals stage does.
    """
    out = np.empty(depth.shape + (3,), np.uint8)
    out[...] = (128, 128, 255)
    rows, cols = content or (slice(None), slice(None))
    d = depth[rows, cols].astype(np.float32) * (scale / 65535.0)
    gx, gy = _sobel(d)
    n = np.stack([gx, gy, np.ones_like(d)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-8
    out[rows, cols] = np.round((n + 1.0) * 127.5).astype(np.uint8)
    return out


def synthetic_sample(image_id: int, size: int = 256, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every column's members of one synthetic sample: ``{column: {ext: value}}`` (values not encoded)."""
    rng = np.random.default_rng([seed, image_id])
    orig, scale, offset, (ys, xs) = _letterbox(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    valid = np.zeros((size, size), bool)
    valid[ys, xs] = True
    top, bottom = ys.start, ys.stop
    horizon = int(top + (bottom - top) * rng.uniform(0.3, 0.6))

    panoptic = np.full((size, size), PANOPTIC_VOID, np.uint8)
    sky, ground = CLASS_BY_NAME[str(rng.choice(_SKY))], CLASS_BY_NAME[str(rng.choice(_GROUND))]
    panoptic[ys, xs] = sky.contiguous_id
    panoptic[horizon:bottom, xs] = ground.contiguous_id
    # relative inverse depth: far at the horizon, nearer towards the bottom; things stand out
    inv = np.where(yy < horizon, 0.2, 0.2 + 2.0 * (yy - horizon) / max(1, bottom - horizon))
    inv = inv + 0.05 * np.sin(xx / 17.0) + rng.normal(0, 0.002, (size, size))  # teacher-like fine texture
    image = np.zeros((size, size, 3), np.float32)
    image[:] = np.array(sky.color, np.float32)
    image[yy >= horizon] = np.array(ground.color, np.float32)
    image *= (0.75 + 0.25 * (yy / size))[..., None]

    persons, crowd, present = [], [], [sky.name, ground.name]
    for _ in range(int(rng.integers(1, 5))):
        cls = CLASS_BY_NAME[str(rng.choice(_THINGS))]
        bw = rng.uniform(0.12, 0.35) * (xs.stop - xs.start)
        bh = bw * (2.4 if cls.name == "person" else rng.uniform(0.6, 1.2))
        x0 = rng.uniform(xs.start, xs.stop - bw)
        y1 = rng.uniform(horizon, bottom)
        y0 = max(top, y1 - bh)
        cx, cy, rx, ry = x0 + bw / 2, (y0 + y1) / 2, bw / 2, (y1 - y0) / 2
        mask = valid & (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0)
        panoptic[mask] = cls.contiguous_id
        inv = np.where(mask, 0.3 + 2.0 * (y1 - horizon) / max(1, bottom - horizon) + 0.3 * (1 - (xx - cx) ** 2
                                                                                          / rx ** 2), inv)
        image[mask] = np.array(cls.color, np.float32) * (0.8 + 0.2 * (yy[mask] - y0) / max(1.0, y1 - y0))[:, None]
        present.append(cls.name)
        if cls.name == "person":
            kp = np.column_stack([x0 + _POSE[:, 0] * bw, y0 + _POSE[:, 1] * (y1 - y0), np.full(17, 2.0)])
            kp[:, :2] += rng.normal(0, 1.5, (17, 2))
            vis = rng.random(17)
            kp[vis < 0.15, 2] = 1
            kp[vis < 0.05] = 0
            persons.append({"keypoints": np.round(kp, 2).tolist(), "bbox": [round(x0, 2), round(y0, 2),
                                                                             round(bw, 2), round(y1 - y0, 2)],
                            "num_keypoints": int((kp[:, 2] > 0).sum())})
    if rng.random() < 0.2:
        crowd.append({"bbox": [float(xs.start), float(top), 0.12 * size, 0.08 * size]})

    text = np.zeros((size, size), np.uint8)
    polygons, scores = [], []
    for _ in range(int(rng.integers(0, 3))):
        tw, th = rng.uniform(0.08, 0.23) * size, rng.uniform(0.025, 0.055) * size
        tx, ty = rng.uniform(xs.start, xs.stop - tw), rng.uniform(top, bottom - th)
        box = (yy >= ty) & (yy < ty + th) & (xx >= tx) & (xx < tx + tw)
        text[box] = 255
        image[box] = 235.0
        image[box & ((xx.astype(int) // 3) % 2 == 0)] = 30.0  # letter strokes
        polygons.append([[round(tx, 1), round(ty, 1)], [round(tx + tw, 1), round(ty, 1)],
                         [round(tx + tw, 1), round(ty + th, 1)], [round(tx, 1), round(ty + th, 1)]])
        scores.append(round(float(rng.uniform(0.6, 1.0)), 3))

    image += rng.normal(0, 6.0, image.shape)  # sensor noise, so the JPEG has photo-like size
    image[~valid] = 0
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    lo, hi = float(inv[valid].min()), float(inv[valid].max())
    depth = np.zeros((size, size), np.uint16)
    depth[valid] = np.round((inv[valid] - lo) / (hi - lo) * 65535).astype(np.uint16)
    groups = np.zeros((size, size), np.uint8)
    for name in set(present):
        groups[panoptic == CLASS_BY_NAME[name].contiguous_id] = GROUPS.index(CLASS_BY_NAME[name].group) + 1

    words, counts, _, vectors = _vocabulary(seed)
    things = present[2:]
    verb = str(rng.choice(("standing", "sitting", "walking", "playing", "parked")))
    where = ground.name.split("-")[0]
    caption = f"a {things[0]} {verb} on the {where}" + (f" with a {things[1]}" if len(things) > 1 else "") \
        + f" under the {sky.name.split('-')[0]}"
    caption_words = [w for w in caption.split() if w in words]
    ids = sorted(dict.fromkeys(words.index(w) for w in caption_words), key=lambda i: -counts[i])[:MAX_TOKEN_IDS]
    glove = np.zeros((NUM_TOKENS, GLOVE_DIM), np.float16)
    glove[: min(NUM_TOKENS, len(ids))] = vectors[ids[:NUM_TOKENS]]

    meta = {"id": image_id, "file_name": f"{key_of(image_id)}.jpg", "orig_size": list(orig), "size": size,
            "scale": scale, "offset": list(offset), "resized": [xs.stop - xs.start, ys.stop - ys.start]}
    return {
        "base": {"jpg": rgb, "meta.json": meta},
        "pose": {"pose.json": {"persons": persons, "crowd": crowd, "source": "synthetic"}},
        "depth": {"depth.png": depth, "depth.json": {"kind": "relative", "min": lo, "max": hi,
                                                     "scale": (hi - lo) / 65535.0}},
        "normals": {"normals.png": normals_from_depth(depth, content=(ys, xs))},
        "panoptic": {"panoptic.png": panoptic},
        "groups": {"groups.png": groups},
        "text": {"text.png": text, "text.json": {"polygons": polygons, "scores": scores}},
        "caption": {"caption.json": {"captions": [caption], "source": "synthetic"}},
        "tokens": {"tokens.json": {"ids": ids}, "glove.npy": glove},
    }


def fingerprint(column: str, size: int, seed: int) -> str:
    """The fingerprint of a synthetic column version (changes with the size and the seed)."""
    return hashlib.sha256(f"synthetic:{column}:{size}:{seed}".encode()).hexdigest()


def write_synthetic_store(root: str | os.PathLike, split: str, num_samples: int, shard_size: int,
                          size: int = 256, seed: int = 0) -> Manifest:
    """Write a complete synthetic split (all columns, ``vocab.json``) and activate every column.

    Args:
        root: store root; the split goes to ``<root>/<split>``.
        split: split name, e.g. ``"train2017"``.
        num_samples: number of samples; image ids are distinct, sorted and seeded.
        shard_size: samples per shard (the last shard may be shorter).
        size: store size S of every image-shaped member.
        seed: seed of all content.

    Returns:
        The final manifest.
    """
    if num_samples < 1 or shard_size < 1:
        raise ValueError("num_samples and shard_size must be positive")
    split_path = Path(root) / split
    split_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    ids = sorted(int(i) for i in rng.choice(np.arange(1, 600_000), num_samples, replace=False))
    chunks = [ids[i:i + shard_size] for i in range(0, num_samples, shard_size)]
    entries = [ShardEntry(shard_name(split, k), len(c)) for k, c in enumerate(chunks)]
    manifest = Manifest(split=split, size=size, shard_size=shard_size, shards=entries,
                        config={"synthetic": {"seed": seed, "num_samples": num_samples}})
    save_manifest(split_path, manifest)
    write_vocab_json(split_path, seed)
    writers = {c: ColumnWriter(split_path, c, fingerprint(c, size, seed), {"stage": c, "synthetic": True})
               for c in COLUMNS}
    for entry, chunk in zip(entries, chunks):
        samples = [(key_of(i), synthetic_sample(i, size, seed)) for i in chunk]
        for c, writer in writers.items():
            writer.write_shard(entry.name, [(key, s[c]) for key, s in samples])
    for c, writer in writers.items():
        manifest = activate_column(split_path, c, writer.fingerprint)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m shards.synthetic --out ROOT``: write a synthetic split (for trying the tools)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m shards.synthetic", description=main.__doc__)
    p.add_argument("--out", required=True, help="store root")
    p.add_argument("--split", default="train2017")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    m = write_synthetic_store(a.out, a.split, a.samples, a.shard_size, a.size, a.seed)
    print(f"wrote {m.num_samples} samples in {len(m.shards)} shards to {Path(a.out) / a.split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
