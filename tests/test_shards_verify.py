"""`shards verify`: a clean store passes; truncation, a flipped byte, a missing key and misaligned keys are caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from shards_stores import synthetic_store_fixtures

from shards.cli import main
from shards.manifest import load_manifest, save_manifest
from shards.reader import StoreReader
from shards.verify import verify_split
from shards.writer import ColumnWriter

SPLIT = "train2017"
clean, store = synthetic_store_fixtures(SPLIT, num_samples=9, shard_size=4, size=48, seed=1)


def _shard_file(store: Path, column: str, shard: str) -> Path:
    return Path(StoreReader(store, SPLIT, [column]).shard_location(column, shard))


def _keys(store: Path, shard: str) -> list[str]:
    return [s["__key__"] for s in StoreReader(store, SPLIT, ["base"], decode=False) if s["__shard__"] == shard]


def _verify_cli(store: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    rc = main(["--shards", str(store), "--split", SPLIT, "verify"])
    out = capsys.readouterr()
    return rc, (out.out + out.err).strip()


def _replace_caption_shard(store: Path, shard: str, keys: list[str]) -> None:
    """Point the manifest at a caption version whose ``shard`` holds ``keys`` (other shards copied)."""
    split = store / SPLIT
    m = load_manifest(split)
    writer = ColumnWriter(split, "caption", "edited")
    for name in m.shard_names:
        rows = keys if name == shard else _keys(store, name)
        writer.write_shard(name, [(k, {"caption.json": {"captions": ["x"], "source": "t"}}) for k in rows])
    m.columns["caption"] = "edited"  # activate_column would refuse it; a damaged store can still look like this
    save_manifest(split, m)


def test_clean_store_passes(clean: Path, capsys: pytest.CaptureFixture) -> None:
    report = verify_split(clean, SPLIT)
    assert report.ok and report.shards == 3 and report.samples == 9 and len(report.columns) == 9
    rc, out = _verify_cli(clean, capsys)
    assert rc == 0 and "OK" in out and "3 shards" in out and "9 samples" in out


def test_truncated_tar(store: Path, capsys: pytest.CaptureFixture) -> None:
    f = _shard_file(store, "depth", "train2017-000001")
    f.write_bytes(f.read_bytes()[:3000])
    rc, out = _verify_cli(store, capsys)
    assert rc == 1 and len(out.splitlines()) == 1
    assert "shard train2017-000001 column 'depth' key " in out and "truncated tar" in out
    assert _keys(store, "train2017-000001")[0] in out  # the member cut short belongs to the first sample


def test_a_damaged_base_shard_is_reported_and_no_healthy_column_blamed(store: Path) -> None:
    f = _shard_file(store, "base", "train2017-000001")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    only_depth = verify_split(store, SPLIT, ["depth"], first_only=False)
    assert [(x.shard, x.column) for x in only_depth.faults] == [("train2017-000001", "base")]
    assert "truncated tar" in only_depth.faults[0].message
    everything = verify_split(store, SPLIT, first_only=False)
    assert [(x.shard, x.column) for x in everything.faults] == [("train2017-000001", "base")]


def test_a_cut_end_or_a_missing_version_is_named_as_such(store: Path) -> None:
    f = _shard_file(store, "depth", "train2017-000001")
    data = f.read_bytes()
    assert data.endswith(bytes(1024))  # the tar's zero blocks after its end marker
    f.write_bytes(data[:-1024])
    (fault,) = verify_split(store, SPLIT, ["depth"]).faults
    assert fault.message == (f"{len(data) - 1024} bytes, column.json says {len(data)}, yet every sample is whole: "
                             "the file was cut or extended after its last member")
    m = load_manifest(store / SPLIT)
    m.columns["normals"] = "f" * 64
    save_manifest(store / SPLIT, m)
    (fault,) = verify_split(store, SPLIT, ["normals"]).faults
    assert fault.message.startswith("the manifest's active version ffffffffffff does not exist (versions present: ")


def test_flipped_byte(store: Path, capsys: pytest.CaptureFixture) -> None:
    f = _shard_file(store, "normals", "train2017-000002")
    data = bytearray(f.read_bytes())
    data[512 + 200] ^= 0x55  # inside the first sample's normals.png
    f.write_bytes(bytes(data))
    rc, out = _verify_cli(store, capsys)
    assert rc == 1 and len(out.splitlines()) == 1
    first = _keys(store, "train2017-000002")[0]
    assert out.startswith(f"shards verify: shard train2017-000002 column 'normals' key {first}: sha256 differs")
    assert "normals.png" in out


def test_flipped_byte_in_a_header(store: Path) -> None:
    f = _shard_file(store, "caption", "train2017-000000")
    data = bytearray(f.read_bytes())
    data[5] ^= 0x01  # the first member's name
    f.write_bytes(bytes(data))
    (fault,) = verify_split(store, SPLIT).faults
    assert fault.shard == "train2017-000000" and fault.column == "caption" and "checksum" in fault.message


def test_missing_key(store: Path, capsys: pytest.CaptureFixture) -> None:
    keys = _keys(store, "train2017-000001")
    _replace_caption_shard(store, "train2017-000001", keys[:1] + keys[2:])
    rc, out = _verify_cli(store, capsys)
    assert rc == 1 and len(out.splitlines()) == 1
    assert f"shard train2017-000001 column 'caption' key {keys[1]}: missing key {keys[1]}" in out


def test_misaligned_keys(store: Path, capsys: pytest.CaptureFixture) -> None:
    keys = _keys(store, "train2017-000002")
    wrong = f"{int(keys[0]) - 1:012d}"
    _replace_caption_shard(store, "train2017-000002", [wrong] + keys[1:])
    rc, out = _verify_cli(store, capsys)
    assert rc == 1 and len(out.splitlines()) == 1
    assert f"shard train2017-000002 column 'caption' key {wrong}: misaligned keys at sample 0" in out
    assert keys[0] in out


def test_missing_shard_file_and_record(store: Path, capsys: pytest.CaptureFixture) -> None:
    _shard_file(store, "groups", "train2017-000000").unlink()
    (fault,) = verify_split(store, SPLIT).faults
    assert fault.column == "groups" and fault.shard == "train2017-000000" and "missing" in fault.message
    report = verify_split(store, SPLIT, first_only=False)
    assert len(report.faults) == 1 and report.shards == 3
    _shard_file(store, "text", "train2017-000002").unlink()
    assert main(["--shards", str(store), "--split", SPLIT, "verify", "--all"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "'groups'" in err[0] and "'text'" in err[1] and "train2017-000002" in err[1]
