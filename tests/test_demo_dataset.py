"""The demo COCO root: deterministic bytes, every good image becomes a base sample, every bad file is rejected."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline.coco import load_split
from pipeline.demo import OMITTED_GLOVE_WORDS, SPLITS, bad_files, make_demo
from pipeline.demo.figures import beach
from pipeline.samples import RejectedImage, base_sample, decode_image
from shards.codecs import decode_png


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic(demo_root: Path, tmp_path: Path) -> None:
    again = make_demo(tmp_path / "again")
    assert _tree_digest(again) == _tree_digest(demo_root)


def test_demo_layout(demo_root: Path) -> None:
    for split, entries in SPLITS.items():
        for kind in ("instances", "person_keypoints", "captions", "panoptic"):
            assert (demo_root / "annotations" / f"{kind}_{split}.json").is_file()
        records = load_split(demo_root, split)
        assert [r.image_id for r in records] == sorted(i for i, _, _ in entries)
        assert all(len(r.captions) == 5 for r in records)
    assert 12 <= len(SPLITS["train2017"]) <= 16 and 4 <= len(SPLITS["val2017"]) <= 6
    assert (demo_root / "glove" / "glove.demo.300d.txt").is_file()


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_every_good_image_is_a_sample_and_every_bad_file_rejected(demo_root: Path, split: str) -> None:
    expected_bad = bad_files(split)
    rejected, samples = {}, {}
    for rec in load_split(demo_root, split):
        try:
            members, image = base_sample(rec, 128)
        except RejectedImage as e:
            rejected[rec.file_name] = e.reason
            continue
        samples[rec.file_name] = members
        assert image.shape == (rec.height, rec.width, 3) and image.dtype == np.uint8
        assert members["jpg"].shape == (128, 128, 3)
        assert members["meta.json"]["id"] == rec.image_id
    assert rejected == expected_bad
    assert len(samples) + len(rejected) == len(SPLITS[split])
    if split == "train2017":
        assert set(expected_bad.values()) == {"truncated", "empty", "missing"}


def test_odd_files_decode_to_the_scene_pixels(demo_root: Path) -> None:
    kinds = {f"{i:012d}": kind for i, _, kind in SPLITS["train2017"]}
    scene_of = {f"{i:012d}": make for i, make, _ in SPLITS["train2017"]}
    for stem in ("000000000632", "000000000776", "000000000802", "000000000885", "000000001296"):
        path = next((demo_root / "train2017").glob(stem + ".*"))
        image = decode_image(path).astype(np.float32)
        truth = scene_of[stem]().image.astype(np.float32)
        assert image.shape == truth.shape, kinds[stem]
        err = np.abs(image - truth).mean()
        # lossless kinds are exact; JPEG kinds (CMYK, gray, EXIF-rotated) stay within JPEG noise
        assert err < (0.01 if kinds[stem] in ("png16", "png-in-jpg") else 6.0), (kinds[stem], err)


def test_exif_rotated_image_is_shown_upright(demo_root: Path) -> None:
    rec = next(r for r in load_split(demo_root, "train2017") if r.image_id == 1296)
    assert (rec.width, rec.height) == (420, 560)
    members, image = base_sample(rec, 256)
    assert image.shape == (560, 420, 3)
    # the sky is at the top of the upright scene
    assert image[:50, :, 2].mean() > image[-50:, :, 2].mean() + 40
    assert np.abs(image.astype(float) - beach().image.astype(float)).mean() < 6.0


def test_panoptic_pngs_match_segments_info(demo_root: Path) -> None:
    for rec in load_split(demo_root, "train2017"):
        if rec.panoptic is None:
            continue
        rgb = decode_png(Path(rec.panoptic["file"]).read_bytes()).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        assert ids.shape == (rec.height, rec.width)
        info = {s["id"]: s for s in rec.panoptic["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == set(info)
        for seg_id, s in info.items():
            assert int((ids == seg_id).sum()) == s["area"]


def test_glove_file_covers_caption_words_except_the_omitted(demo_root: Path) -> None:
    words = {line.split(" ", 1)[0] for line in (demo_root / "glove" / "glove.demo.300d.txt").read_text().splitlines()}
    assert {"cat", "astronaut", "coffee", "motorcycle", "kite"} <= words
    assert not set(OMITTED_GLOVE_WORDS) & words
    first = (demo_root / "glove" / "glove.demo.300d.txt").read_text().splitlines()[0].split(" ")
    assert len(first) == 301


def test_demo_refuses_to_overwrite_another_coco_tree(tmp_path: Path) -> None:
    (tmp_path / "train2017").mkdir()
    (tmp_path / "train2017" / "000000000001.jpg").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="did not write"):
        make_demo(tmp_path)
    assert (tmp_path / "train2017" / "000000000001.jpg").read_bytes() == b"real data"
