"""Store format: every column is a stock WebDataset, `tar tf` lists `<key>.<ext>`, writes are byte-identical."""

from __future__ import annotations

import filecmp
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shards.codecs import decode_png
from shards.layout import column_dir
from shards.manifest import load_manifest
from shards.reader import StoreReader
from shards.schema import COLUMNS
from shards.synthetic import write_synthetic_store

SPLIT = "val2017"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmt")
    write_synthetic_store(root, SPLIT, num_samples=7, shard_size=3, size=40, seed=2)
    return root


def _tars(root: Path) -> dict[str, Path]:
    split = root / SPLIT
    m = load_manifest(split)
    return {f"{c}/{s}": column_dir(split, c, fp) / f"{s}.tar" for c, fp in m.columns.items() for s in m.shard_names}


def test_tar_tf_lists_key_dot_ext_members(store: Path) -> None:
    keys = [s["__key__"] for s in StoreReader(store, SPLIT, ["base"], decode=False)]
    for name, tar in _tars(store).items():
        column, shard = name.split("/")
        listed = subprocess.run(["tar", "tf", str(tar)], capture_output=True, text=True, check=True).stdout.split()
        shard_keys = [k for k, s in zip(keys, [x["__shard__"] for x in StoreReader(store, SPLIT, ["base"],
                                                                                     decode=False)]) if s == shard]
        assert listed == [f"{k}.{e}" for k in shard_keys for e in sorted(COLUMNS[column].exts)], name


@pytest.mark.parametrize("column", list(COLUMNS))
def test_stock_webdataset_reads_each_column(store: Path, column: str) -> None:
    wds = pytest.importorskip("webdataset")
    urls = [str(p) for n, p in sorted(_tars(store).items()) if n.startswith(column + "/")]
    ours = list(StoreReader(store, SPLIT, [column], decode=False))
    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in ours]
    for a, b in zip(ours, theirs):
        for ext in COLUMNS[column].exts:
            assert b[ext] == a[ext]  # same member bytes
    if column == "depth":  # and the 16-bit map is intact once decoded with the project codecs
        depth = decode_png(theirs[0]["depth.png"])
        assert depth.dtype == np.uint16 and depth.max() == 65535 and len(np.unique(depth)) > 256


def test_writing_the_same_data_twice_is_byte_identical(tmp_path: Path, store: Path) -> None:
    write_synthetic_store(tmp_path, SPLIT, num_samples=7, shard_size=3, size=40, seed=2)
    first, second = _tars(store), _tars(tmp_path)
    assert first.keys() == second.keys() and len(first) == 8 * 3
    for name in first:
        assert filecmp.cmp(first[name], second[name], shallow=False), name
    for name in first:  # the column records agree too (sha256 of every shard)
        a = json.loads((first[name].parent / "column.json").read_text())["shards"]
        b = json.loads((second[name].parent / "column.json").read_text())["shards"]
        assert a == b


def test_store_files_are_readable_by_others(store: Path) -> None:
    split = store / SPLIT
    files = [split / "manifest.json", split / "vocab.json", *_tars(store).values(),
             *(p.parent / "column.json" for p in _tars(store).values())]
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o644, f
    assert not list(split.rglob("*.tmp"))  # no temporary file left behind
