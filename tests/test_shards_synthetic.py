"""The synthetic store writer: consistent, schema-conforming content in every column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shards.manifest import load_manifest
from shards.reader import StoreReader
from shards.schema import COLUMNS
from shards.synthetic import normals_from_depth, write_synthetic_store
from shards.taxonomy import GROUPS, NUM_TOKENS, PANOPTIC_CLASSES, PANOPTIC_VOID
from shards.vocab import Vocabulary

SPLIT = "train2017"


def test_synthetic_store_content_is_consistent(tmp_path: Path) -> None:
    m = write_synthetic_store(tmp_path, SPLIT, num_samples=6, shard_size=4, size=96, seed=11)
    assert m.num_samples == 6 and [s.count for s in m.shards] == [4, 2] and set(m.columns) == set(COLUMNS)
    assert load_manifest(tmp_path / SPLIT).columns == m.columns
    vocab = Vocabulary.load(tmp_path / SPLIT / "vocab.json")
    group_of = np.zeros(256, np.uint8)
    for c in PANOPTIC_CLASSES:
        group_of[c.contiguous_id] = GROUPS.index(c.group) + 1
    people = 0
    for s in StoreReader(tmp_path, SPLIT):
        meta = s["meta.json"]
        assert int(s["__key__"]) == meta["id"] and meta["size"] == 96
        ox, oy = meta["offset"]
        w, h = (round(v * meta["scale"]) for v in meta["orig_size"])
        valid = np.zeros((96, 96), bool)
        valid[oy:oy + h, ox:ox + w] = True
        assert (s["panoptic.png"][~valid] == PANOPTIC_VOID).all() and (s["panoptic.png"][valid] < 133).all()
        np.testing.assert_array_equal(s["groups.png"], group_of[s["panoptic.png"]])
        assert not s["depth.png"][~valid].any() and s["depth.png"][valid].max() == 65535
        content = (slice(oy, oy + h), slice(ox, ox + w))
        np.testing.assert_array_equal(s["normals.png"], normals_from_depth(s["depth.png"], content=content))
        assert (s["normals.png"][~valid] == (128, 128, 255)).all()
        assert meta["resized"] == [w, h]
        info = s["depth.json"]
        assert info["scale"] == pytest.approx((info["max"] - info["min"]) / 65535)
        assert set(np.unique(s["text.png"])) <= {0, 255}
        assert len(s["text.json"]["polygons"]) == len(s["text.json"]["scores"])
        assert (s["jpg"][~valid] < 40).all() and s["jpg"][valid].std() > 10  # letterbox bars stay dark
        for person in s["pose.json"]["persons"]:
            people += 1
            kp = np.asarray(person["keypoints"])
            assert kp.shape == (17, 3) and set(np.unique(kp[:, 2])) <= {0, 1, 2}
            seen = kp[kp[:, 2] > 0]
            assert ((seen[:, 0] > ox - 3) & (seen[:, 0] < ox + w + 3)).all()
        ids = s["tokens.json"]["ids"]
        assert ids and all(0 <= i < len(vocab) for i in ids)
        assert [vocab.counts[i] for i in ids] == sorted((vocab.counts[i] for i in ids), reverse=True)
        words = s["caption.json"]["captions"][0].split()
        assert all(vocab.words[i] in words for i in ids)
        glove = s["glove.npy"]
        assert glove.dtype == np.float16 and glove.shape == (NUM_TOKENS, 300)
        k = min(len(ids), NUM_TOKENS)
        np.testing.assert_array_equal(glove[:k], vocab.vectors[ids[:k]].astype(np.float16))
        assert not glove[k:].any() and np.abs(glove).max() <= 1
    assert people > 0
