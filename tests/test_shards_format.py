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
    assert first.keys() == second.keys() and len(first) == len(COLUMNS) * 3
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


def test_tar_headers_are_standard_ustar_with_fixed_fields() -> None:
    import io
    import random
    import tarfile

    from shards.writer import write_tar

    rng = random.Random(0)
    samples = [(f"{i:012d}", {ext: rng.randbytes(rng.choice([0, 1, 511, 512, 513, 5000]))
                              for ext in ("jpg", "depth.png", "meta.json")}) for i in range(7)]
    buf = io.BytesIO()
    assert write_tar(buf, samples) == [key for key, _ in samples]
    data = buf.getvalue()
    assert len(data) % (20 * 512) == 0  # whole tar records, as tarfile pads them
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"{k}.{e}" for k, m in samples for e in sorted(m)]
        for member, (key, ext) in zip(members, [(k, e) for k, m in samples for e in sorted(m)]):
            assert (member.mode, member.mtime, member.uid, member.gid, member.uname, member.type) == \
                (0o444, 0, 0, 0, "", tarfile.REGTYPE)
            assert tar.extractfile(member).read() == dict(samples)[key][ext]
    # the very bytes tarfile writes for these fields (where its device fields of files are empty, as here)
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(members[ext]), 0, 0o444, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(members[ext]))
    if ref.getvalue()[329:345] == bytes(16):
        assert data == ref.getvalue()
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        write_tar(io.BytesIO(), [("k" * 100, {"jpg": b""})])
