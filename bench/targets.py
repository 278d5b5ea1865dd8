"""CPU cost per image of the base stage and the derived targets (normals, groups, tokens) on 640x480 images.

Baseline, measured in the same run on the same files: a bare JPEG decode + resize to the store size.
Each stage's sample function (the derived work: decode + letterbox, the keypoints mapped into it, normals, groups,
tokens)
is timed apart from encoding its members with the store codecs, which is reported next to it.
Target: base + pose + normals + groups + tokens <= 1.5 x the bare decode + resize.

Usage: .venv/bin/python bench/targets.py [--rounds 15] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.coco import ImageRecord, load_split  # noqa: E402
from pipeline.demo import make_demo  # noqa: E402
from pipeline.samples import (RejectedImage, base_sample, build_vocabulary, groups_sample, load_glove,  # noqa: E402
                              normals_sample, panoptic_sample, pose_sample, tokens_sample)
from shards.codecs import JPEG_QUALITY, PNG_COMPRESSION, decode_png, encode_sample  # noqa: E402
from shards.geometry import Letterbox  # noqa: E402
from shards.schema import COLUMNS  # noqa: E402
from teachers.panoptic_ids import contiguous_from_coco_png  # noqa: E402

TARGET_RATIO = 1.5
W, H = 640, 480


def _prepare(workdir: Path, size: int) -> list[dict]:
    """Demo images resized to 640x480 JPEGs, with their records and the inputs each derived stage reads."""
    import cv2

    coco = make_demo(workdir / "demo")
    records = load_split(coco, "train2017")
    kv = load_glove(coco / "glove" / "glove.demo.300d.txt")
    vocab = build_vocabulary([{"captions": r.captions} for r in records], kv)
    items = []
    for rec in records:
        try:
            _, image = base_sample(rec, size)
        except RejectedImage:
            continue
        sx, sy = W / rec.width, H / rec.height
        resized = cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA)
        path = workdir / f"{rec.image_id:012d}.jpg"
        path.write_bytes(cv2.imencode(".jpg", resized[:, :, ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        persons = [{"keypoints": [[x * sx, y * sy, v] for x, y, v in p["keypoints"]],
                    "bbox": [p["bbox"][0] * sx, p["bbox"][1] * sy, p["bbox"][2] * sx, p["bbox"][3] * sy]}
                   for p in rec.persons]
        record = ImageRecord(rec.image_id, path.name, str(path), W, H, persons, [], rec.captions, None)
        meta = {"id": rec.image_id, "file_name": path.name, **Letterbox.fit(W, H, size).to_meta()}
        gray = cv2.GaussianBlur(cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 8)
        depth_png = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
        depth_png = (depth_png / max(float(depth_png.max()), 1.0) * 65535).astype(np.uint16)
        classes = np.full((H, W), 255, np.uint8)
        if rec.panoptic is not None:
            rgb = decode_png(Path(rec.panoptic["file"]).read_bytes())
            classes = cv2.resize(contiguous_from_coco_png(rgb, rec.panoptic["segments_info"]), (W, H),
                                 interpolation=cv2.INTER_NEAREST)
        panoptic_png = panoptic_sample({"classes": classes}, meta)["panoptic.png"]
        items.append({"record": record, "path": path, "meta": meta, "depth_png": depth_png,
                      "pose_pred": {"persons": persons, "crowd": []},
                      "panoptic_png": panoptic_png, "caption_json": {"captions": rec.captions, "source": "coco"}})
    return items, vocab


def _time_once(fn: Callable[[dict], object], items: list[dict]) -> float:
    """Mean milliseconds per image of one pass over the items."""
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) * 1000 / len(items)


def _encoder(column: str, members: dict[int, dict]) -> Callable[[dict], object]:
    """Encode the members computed earlier for an item with the store codecs of ``column``."""
    return lambda item: encode_sample(COLUMNS[column], members[id(item)])


def _time_interleaved(fns: dict[str, Callable[[dict], object]], items: list[dict], rounds: int) -> dict[str, float]:
    """Median over rounds of each function's mean milliseconds per image; every round times every function
    once, in turn, so that load from other processes weighs on the baseline and the stages alike."""
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            per_round[name].append(_time_once(fn, items))
    return {name: statistics.median(times) for name, times in per_round.items()}


def main(argv: list[str] | None = None) -> int:
    import cv2

    cv2.setNumThreads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    size = args.size

    from shards.codecs import decode_jpeg

    with tempfile.TemporaryDirectory() as tmp:
        items, vocab = _prepare(Path(tmp), size)
        box = Letterbox.fit(W, H, size)

        def bare(item):
            image = decode_jpeg(item["path"].read_bytes())
            return cv2.resize(image, (box.resized_w, box.resized_h), interpolation=cv2.INTER_AREA)

        stages = {  # name -> (column, sample function)
            "base": ("base", lambda item: base_sample(item["record"], size)[0]),
            "pose": ("pose", lambda item: pose_sample(item["pose_pred"], item["meta"], "pose-gt")),
            "normals": ("normals", lambda item: normals_sample(item["depth_png"], 240.0, item["meta"])),
            "groups": ("groups", lambda item: groups_sample(item["panoptic_png"])),
            "tokens": ("tokens", lambda item: tokens_sample(item["caption_json"], vocab)),
        }
        _time_once(bare, items)  # warm-up: imports, caches
        fns: dict[str, Callable[[dict], object]] = {"bare": bare}
        for name, (col, fn) in stages.items():
            by_key = {id(item): fn(item) for item in items}
            fns[f"compute {name}"] = fn
            fns[f"encode {name}"] = _encoder(col, by_key)
        ms = _time_interleaved(fns, items, args.rounds)
        bare_ms = ms["bare"]
        compute = {name: ms[f"compute {name}"] for name in stages}
        encode = {name: ms[f"encode {name}"] for name in stages}

    derived = sum(compute.values())
    stored = derived + sum(encode.values())
    ratio, stored_ratio = derived / bare_ms, stored / bare_ms
    print(f"{len(items)} demo images resized to {W}x{H}, store size {size}, {args.rounds} rounds, one thread")
    print(f"{'stage':<22}{'compute ms':>11}{'encode ms':>11}{'x bare':>9}")
    print(f"{'bare decode+resize':<22}{bare_ms:>11.3f}{'':>11}{1.0:>9.2f}")
    for name in stages:
        print(f"{name:<22}{compute[name]:>11.3f}{encode[name]:>11.3f}{compute[name] / bare_ms:>9.2f}")
    print(f"{'all derived work':<22}{derived:>11.3f}{'':>11}{ratio:>9.2f}   target <= {TARGET_RATIO}")
    print(f"{'... plus store encoding':<22}{stored:>11.3f}{'':>11}{stored_ratio:>9.2f}   "
          f"(codecs: JPEG q{JPEG_QUALITY}, PNG level {PNG_COMPRESSION})")
    print(json.dumps({"bench": "targets", "images": len(items), "size": size, "width": W, "height": H,
                      "bare_decode_resize_ms": round(bare_ms, 3),
                      "compute_ms": {k: round(v, 3) for k, v in compute.items()},
                      "encode_ms": {k: round(v, 3) for k, v in encode.items()},
                      "derived_ms": round(derived, 3), "ratio_vs_bare": round(ratio, 3),
                      "derived_with_encoding_ms": round(stored, 3), "ratio_with_encoding": round(stored_ratio, 3),
                      "target_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
