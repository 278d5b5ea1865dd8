"""Joined reader: exact values, key joins, node/worker splitting, shuffling, resampling, URLs."""

from __future__ import annotations

import io
import itertools
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import shards.codecs as codecs_module
from shards.codecs import decode_jpeg, encode_jpeg
from shards.manifest import StoreError, activate_column, load_manifest, save_manifest
from shards import reader as reader_module
from shards.reader import StoreReader
from shards.schema import COLUMNS
from shards.synthetic import synthetic_sample, write_synthetic_store
from shards.writer import ColumnWriter

SPLIT = "train2017"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_synthetic_store(root, SPLIT, num_samples=26, shard_size=4, size=64, seed=3)
    return root


def _keys(store: Path) -> list[str]:
    return [s["__key__"] for s in StoreReader(store, SPLIT, ["caption"])]


def test_joined_samples_equal_what_was_written(store: Path) -> None:
    manifest = load_manifest(store / SPLIT)
    samples = list(StoreReader(store, SPLIT))
    assert len(samples) == manifest.num_samples == 26
    assert [s["__key__"] for s in samples] == sorted(s["__key__"] for s in samples)
    assert samples[0]["__shard__"] == "train2017-000000" and samples[-1]["__shard__"] == "train2017-000006"
    exts = {m.ext for c in COLUMNS.values() for m in c.members}
    for s in samples:
        assert set(s) == exts | {"__key__", "__shard__"}
        truth = synthetic_sample(int(s["__key__"]), 64, 3)
        for col, members in truth.items():
            for ext, value in members.items():
                if ext == "jpg":  # lossy: compare with the same encode/decode
                    np.testing.assert_array_equal(s[ext], decode_jpeg(encode_jpeg(value)))
                elif isinstance(value, np.ndarray):
                    assert s[ext].dtype == value.dtype and s[ext].shape == value.shape
                    np.testing.assert_array_equal(s[ext], value)
                else:
                    assert s[ext] == json.loads(json.dumps(value)), (col, ext)


def test_every_uint16_value_survives(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, SPLIT, num_samples=1, shard_size=1, size=256)
    manifest = load_manifest(tmp_path / SPLIT)
    key = "%012d" % next(iter(StoreReader(tmp_path, SPLIT, ["base"])))["meta.json"]["id"]
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    writer = ColumnWriter(tmp_path / SPLIT, "depth", "all-values")
    writer.write_shard(manifest.shard_names[0], [(key, {"depth.png": every, "depth.json": {"kind": "relative"}})])
    activate_column(tmp_path / SPLIT, "depth", "all-values")
    (s,) = StoreReader(tmp_path, SPLIT, ["depth"])
    assert s["depth.png"].dtype == np.uint16
    np.testing.assert_array_equal(s["depth.png"], every)


def test_column_choice_and_raw_bytes(store: Path) -> None:
    s = next(iter(StoreReader(store, SPLIT, ["depth", "tokens"], decode=False)))
    assert set(s) == {"__key__", "__shard__", "depth.png", "depth.json", "tokens.json", "glove.npy"}
    assert all(isinstance(s[e], bytes) for e in ("depth.png", "depth.json", "tokens.json", "glove.npy"))
    with pytest.raises(StoreError, match="unknown column 'nope'"):
        StoreReader(store, SPLIT, ["nope"])


def test_inactive_column_is_refused(tmp_path: Path, store: Path) -> None:
    shutil.copytree(store, tmp_path / "s")
    m = load_manifest(tmp_path / "s" / SPLIT)
    del m.columns["text"]
    save_manifest(tmp_path / "s" / SPLIT, m)
    assert "text.png" not in next(iter(StoreReader(tmp_path / "s", SPLIT)))
    with pytest.raises(StoreError, match="column 'text' is not active"):
        StoreReader(tmp_path / "s", SPLIT, ["base", "text"])


def test_key_mismatch_fails_naming_shard_and_keys(tmp_path: Path, store: Path) -> None:
    shutil.copytree(store, tmp_path / "s")
    split = tmp_path / "s" / SPLIT
    m = load_manifest(split)
    keys = [s["__key__"] for s in StoreReader(tmp_path / "s", SPLIT, ["caption"]) if s["__shard__"] == m.shard_names[1]]
    wrong = f"{int(keys[2]) - 1:012d}"  # still sorted, so the writer accepts it
    shifted = keys[:2] + [wrong] + keys[3:]
    writer = ColumnWriter(split, "caption", "misaligned")
    for name in m.shard_names:
        rows = [(k, {"caption.json": {"captions": ["x"], "source": "t"}}) for k in
                (shifted if name == m.shard_names[1] else
                 [s["__key__"] for s in StoreReader(tmp_path / "s", SPLIT, ["base"]) if s["__shard__"] == name])]
        writer.write_shard(name, rows)
    m.columns["caption"] = "misaligned"  # bypass activate_column, which would refuse this version
    save_manifest(split, m)
    with pytest.raises(StoreError) as e:
        list(StoreReader(tmp_path / "s", SPLIT, ["base", "caption"]))
    msg = str(e.value)
    assert "train2017-000001" in msg and keys[2] in msg and wrong in msg and "\n" not in msg

    short = ColumnWriter(split, "caption", "short")  # shard 1 lacks its last key
    for name in m.shard_names:
        rows = [s["__key__"] for s in StoreReader(tmp_path / "s", SPLIT, ["base"]) if s["__shard__"] == name]
        short.write_shard(name, [(k, {"caption.json": {"captions": ["x"], "source": "t"}})
                                 for k in (rows[:-1] if name == m.shard_names[1] else rows)])
    m.columns["caption"] = "short"
    save_manifest(split, m)
    with pytest.raises(StoreError, match=f"at sample 3, column 'caption' has no more samples but column 'base' "
                                         f"has {keys[3]}"):
        list(StoreReader(tmp_path / "s", SPLIT, ["caption", "base"]))
    with pytest.raises(StoreError, match=f"column 'base' has {keys[3]} but column 'caption' has no more samples"):
        list(StoreReader(tmp_path / "s", SPLIT, ["base", "caption"]))


def test_truncated_shard_fails_loudly(tmp_path: Path, store: Path) -> None:
    shutil.copytree(store, tmp_path / "s")
    reader = StoreReader(tmp_path / "s", SPLIT, ["depth"])
    path = Path(reader.shard_location("depth", "train2017-000002"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(StoreError, match=r"shard train2017-000002 column 'depth': truncated tar"):
        list(reader)


def test_a_member_changed_after_writing_that_still_decodes_ends_the_read(tmp_path: Path, store: Path) -> None:
    shutil.copytree(store, tmp_path / "s")
    reader = StoreReader(tmp_path / "s", SPLIT, ["base", "caption"])
    path = Path(reader.shard_location("caption", "train2017-000001"))
    data = path.read_bytes()
    at = data.index(b'"captions":["') + 13  # one letter of a caption: the JSON still parses
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    with pytest.raises(StoreError, match=r"shard train2017-000001 column 'caption': .* is damaged \(sha256 differs "
                                         r"from column.json: it changed after it was written\); run `shards verify`"):
        list(reader)
    assert len(list(StoreReader(tmp_path / "s", SPLIT, ["base", "caption"], check=False))) == 26


def test_a_column_without_its_record_is_refused_before_reading(tmp_path: Path, store: Path) -> None:
    shutil.copytree(store, tmp_path / "s")
    reader = StoreReader(tmp_path / "s", SPLIT, ["depth"])
    (Path(reader.shard_location("depth", "train2017-000000")).parent / "column.json").unlink()
    with pytest.raises(StoreError, match=r"column 'depth': .*column.json: not found; run `shards verify`"):
        StoreReader(tmp_path / "s", SPLIT, ["depth"])
    # a reader that stops early checks nothing and reads no further
    first = next(iter(StoreReader(store, SPLIT, ["depth"])))
    assert first["__shard__"] == "train2017-000000"


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_nodes_two_workers_see_each_sample_once(store: Path, shuffle: bool) -> None:
    torch = pytest.importorskip("torch")
    from shards.torchdata import StoreDataset

    seen: Counter[str] = Counter()
    for rank in range(2):
        reader = StoreReader(store, SPLIT, ["base", "depth"], shuffle=shuffle, seed=5, rank=rank, world_size=2,
                             shuffle_buffer=3)
        loader = torch.utils.data.DataLoader(StoreDataset(reader), batch_size=None, num_workers=2)
        seen.update(s["__key__"] for s in loader)
    assert sorted(seen) == _keys(store)
    assert set(seen.values()) == {1}


@pytest.mark.parametrize("remainder, sizes", [("pad", [9, 9, 9]), ("drop", [8, 8, 8]), ("uneven", [9, 9, 8])])
def test_ranks_from_the_environment_get_equal_shares(store: Path, monkeypatch: pytest.MonkeyPatch, remainder: str,
                                                     sizes: list[int]) -> None:
    everything = _keys(store)  # 26 samples in 7 shards (the last holds 2)
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        parts.append([s["__key__"] for s in StoreReader(store, SPLIT, ["caption"], remainder=remainder)])
    assert [len(p) for p in parts] == sizes
    got = list(itertools.chain(*parts))
    if remainder == "pad":  # the last rank takes the epoch's first sample again
        assert sorted(set(got)) == everything and got[-1] == everything[0]
    elif remainder == "drop":  # 26 = 3 x 8 + 2: the epoch's last two are left out
        assert got == everything[:24]
    else:
        assert got == everything


def test_ranks_outnumbering_shards_split_them(store: Path) -> None:
    from shards.reader import rank_segments

    everything = _keys(store)
    parts = [[s["__key__"] for s in StoreReader(store, SPLIT, ["caption"], rank=r, world_size=13)] for r in range(13)]
    assert [len(p) for p in parts] == [2] * 13 and list(itertools.chain(*parts)) == everything
    shards = [("a", 3), ("b", 2)]  # samples a0 a1 a2 b0 b1
    assert rank_segments(shards, 1, 2) == [("b", 0, 2), ("a", 0, 1)]  # b0 b1, padded with a0
    assert rank_segments(shards, 1, 2, "drop") == [("a", 2, 3), ("b", 0, 1)]  # a2 b0; b1 is left out
    assert rank_segments(shards, 1, 2, "uneven") == [("b", 0, 2)]  # a0 a1 a2 | b0 b1
    assert rank_segments(shards, 3, 4) == [("a", 1, 3)]  # 4 ranks x 2: a0 a1 | a2 b0 | b1 a0 | a1 a2
    with pytest.raises(ValueError, match="remainder 'even'"):
        StoreReader(store, SPLIT, ["caption"], remainder="even")


def test_seeded_shuffle_and_set_epoch(store: Path) -> None:
    def order(seed: int, epoch: int) -> list[str]:
        r = StoreReader(store, SPLIT, ["caption"], shuffle=True, seed=seed, shuffle_buffer=8)
        r.set_epoch(epoch)
        return [s["__key__"] for s in r]

    a = order(1, 0)
    assert a == order(1, 0)
    assert sorted(a) == _keys(store) and a != _keys(store)
    assert order(1, 1) != a and sorted(order(1, 1)) == sorted(a)
    assert order(2, 0) != a


def test_resampled_mode_never_ends(store: Path) -> None:
    reader = StoreReader(store, SPLIT, ["base", "caption"], resampled=True, seed=9)
    got = [s["__key__"] for s in itertools.islice(reader, 100)]
    assert len(got) == 100 and set(got) <= set(_keys(store))
    assert len(set(got)) > 4  # more than one shard was drawn
    assert got == [s["__key__"] for s in itertools.islice(reader, 100)]  # seeded


def test_small_store_yields_its_first_sample_after_a_bounded_chunk(store: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # 64-pixel samples: the pixel budget alone would decode 1024 samples before the first one comes out
    decoded = []
    png = codecs_module.DECODERS["png"]
    monkeypatch.setitem(codecs_module.DECODERS, "png", lambda data: decoded.append(1) or png(data))
    first = next(iter(StoreReader(store, SPLIT, ["depth"], resampled=True, seed=1)))
    assert first["depth.png"].shape == (64, 64)
    assert len(decoded) == reader_module.DECODE_CHUNK_SAMPLES == 64

def test_pipe_and_fsspec_urls(store: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    expected = [(s["__key__"], s["depth.png"].sum()) for s in StoreReader(store, SPLIT, ["depth"])]
    via_pipe = StoreReader(f"pipe:cat {store}/{{}}", SPLIT, ["depth"])
    assert [(s["__key__"], s["depth.png"].sum()) for s in via_pipe] == expected
    fs = fsspec.filesystem("memory")
    for path in store.rglob("*"):
        if path.is_file():
            fs.pipe(f"/mem-store/{path.relative_to(store)}", path.read_bytes())
    via_fsspec = StoreReader("memory://mem-store", SPLIT, ["depth"])
    assert [(s["__key__"], s["depth.png"].sum()) for s in via_fsspec] == expected
    assert via_fsspec.manifest.num_samples == 26
    with pytest.raises(StoreError, match="cannot read the manifest"):
        StoreReader("memory://nowhere", SPLIT)
    with pytest.raises(StoreError, match="exited with status 1"):
        StoreReader(f"pipe:cat {store}/nothing-here/{{}} 2>/dev/null", SPLIT)


def test_short_reads_are_completed(store: Path) -> None:
    from shards.streams import iter_samples

    class Trickle(io.RawIOBase):  # a network-like stream that returns at most 700 bytes per read
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def read(self, n: int = -1) -> bytes:
            n = min(700, len(self.data) - self.pos if n < 0 else n)
            out = self.data[self.pos:self.pos + n]
            self.pos += len(out)
            return out

    path = Path(StoreReader(store, SPLIT, ["depth"]).shard_location("depth", "train2017-000000"))
    with open(path, "rb") as f:
        expected = list(iter_samples(f))
    assert list(iter_samples(Trickle(path.read_bytes()))) == expected and len(expected) == 4


def test_a_pipe_command_that_fails_is_a_fault_of_its_shard(tmp_path: Path, store: Path) -> None:
    shutil.copytree(store, tmp_path / "s")
    reader = StoreReader(tmp_path / "s", SPLIT, ["depth"])
    Path(reader.shard_location("depth", "train2017-000003")).unlink()  # as a server answering 404 to curl -f
    piped = StoreReader(f"pipe:cat {tmp_path / 's'}/{{}} 2>/dev/null", SPLIT, ["depth"])
    with pytest.raises(StoreError, match=r"^shard train2017-000003 column 'depth': pipe:cat .* exited with status 1"):
        list(piped)


def test_a_pipe_stream_reads_past_an_empty_member(tmp_path: Path) -> None:
    import os
    import tarfile

    from shards.streams import iter_tar, open_stream

    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:  # an empty member, then more than a pipe holds
        for name, data in (("k1.empty", b""), ("k1.big", os.urandom(1 << 20))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with open_stream(f"pipe:cat {path}") as f:  # reading 0 bytes was taken for the end: a wait on a full pipe
        assert [(name, len(data)) for name, data in iter_tar(f)] == [("k1.empty", 0), ("k1.big", 1 << 20)]


def test_a_reader_goes_on_from_its_saved_position(store: Path) -> None:
    def reader() -> StoreReader:
        r = StoreReader(store, SPLIT, ["caption"], shuffle=True, seed=3, shuffle_buffer=5)
        r.set_epoch(2)
        return r

    full = [s["__key__"] for s in reader()]
    first, it = reader(), None
    it = iter(first)
    head = [next(it)["__key__"] for _ in range(11)]
    state = first.state_dict()
    assert state == {"epoch": 2, "samples": 11}
    again = StoreReader(store, SPLIT, ["caption"], shuffle=True, seed=3, shuffle_buffer=5)
    again.load_state_dict(json.loads(json.dumps(state)))  # a position survives JSON
    again.set_epoch(2)  # the loop's usual call keeps it; another epoch would drop it
    assert head + [s["__key__"] for s in again] == full
    assert [s["__key__"] for s in again] == full  # the next pass starts at the beginning
    with pytest.raises(ValueError, match="not a StoreReader position"):
        again.load_state_dict({"epoch": 0, "samples": -1})


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_stateful_dataloader_resumes_inside_an_epoch(store: Path, workers: int) -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    from shards.torchdata import StoreDataset

    def loader() -> object:
        reader = StoreReader(store, SPLIT, ["caption"], shuffle=True, seed=5, shuffle_buffer=4)
        reader.set_epoch(1)
        return stateful.StatefulDataLoader(StoreDataset(reader), batch_size=None, num_workers=workers)

    full = [s["__key__"] for s in loader()]
    assert sorted(full) == _keys(store)
    dl = loader()
    it = iter(dl)
    head = [next(it)["__key__"] for _ in range(9)]
    state = dl.state_dict()
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [s["__key__"] for s in resumed]
    assert head + rest == full  # neither repeated nor skipped
