"""`shards info|show|gc|export` on a synthetic store, and the CLI's error conventions."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from shards_stores import synthetic_store_fixtures

from shards.cli import main
from shards.manifest import StoreError
from shards.codecs import decode_png
from shards.manifest import load_manifest
from shards.reader import StoreReader
from shards.show import contact_sheet, find_sample, load_vocab_words
from shards.writer import ColumnWriter

SPLIT = "train2017"
clean, store = synthetic_store_fixtures(SPLIT, num_samples=7, shard_size=3, size=64, seed=6)


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_info_reports_columns_counts_and_bytes(clean: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = _run(capsys, "--shards", str(clean), "info", "--json")
    assert rc == 0
    info = json.loads(out)
    m = load_manifest(clean / SPLIT)
    assert info["num_samples"] == 7 and info["shards"] == 3 and info["size"] == 64
    assert [c["column"] for c in info["columns"]] == list(m.columns)
    for c in info["columns"]:
        files = sorted((clean / SPLIT / c["column"] / c["version"]).glob("*.tar"))
        assert c["version"] == m.columns[c["column"]] and c["shards"] == 3 and c["samples"] == 7
        assert c["bytes"] == sum(f.stat().st_size for f in files)
        assert c["bytes_per_sample"] == pytest.approx(c["bytes"] / 7)
    assert info["vocab_words"] > 10
    rc, out, _ = _run(capsys, "--shards", str(clean), "info")
    assert rc == 0 and "7 samples in 3 shards" in out and out.count("3/3") == len(m.columns)


def test_usage_errors_are_one_line_exit_2(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, needle in [(["--shards", str(tmp_path / "none"), "info"], "no manifest"),
                         (["--shards", str(clean), "frobnicate"], "invalid choice"),
                         (["--shards", str(clean), "show", "12x"], "not a COCO image id"),
                         (["--shards", str(clean), "show", "1"], "no sample with key 000000000001"),
                         (["--shards", str(clean), "--split", "val2017", "verify"], "no manifest"),
                         (["--shards", str(clean), "export"], "--out")]:
        rc, out, err = _run(capsys, *argv)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, argv


def test_show_writes_a_contact_sheet(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    samples = list(StoreReader(clean, SPLIT))
    person = next(s for s in samples if s["pose.json"]["persons"])
    key = person["__key__"]
    rc, out, _ = _run(capsys, "--shards", str(clean), "show", str(int(key)), "--out", str(tmp_path / "k.png"))
    assert rc == 0 and out.strip() == str(tmp_path / "k.png")
    sheet = decode_png((tmp_path / "k.png").read_bytes())
    assert sheet.dtype == np.uint8 and sheet.shape[1] == 3 * 256 and sheet.shape[0] > 2 * 256
    assert np.array_equal(find_sample(clean, SPLIT, key)["depth.png"], person["depth.png"])
    words = load_vocab_words(clean, SPLIT)
    assert words and len(words) > max(person["tokens.json"]["ids"])
    np.testing.assert_array_equal(contact_sheet(person, words), sheet)
    assert (contact_sheet(person, None)[512:] != sheet[512:]).any()  # the token words are written out
    # the keypoint overlay changes the image tile but not the sample it was drawn from
    bare = dict(person, **{"pose.json": {"persons": [], "crowd": []}})
    assert (contact_sheet(bare)[:256, :256] != sheet[:256, :256]).any()
    # each of the six tiles has content (not a flat grey "missing" tile)
    for r in range(2):
        for c in range(3):
            assert sheet[r * 256 + 30:(r + 1) * 256, c * 256:(c + 1) * 256].std() > 5, (r, c)
    missing = contact_sheet({k: v for k, v in person.items() if not k.startswith("depth")})
    assert missing[128, 256 + 128].tolist() == [64, 64, 64]  # grey tile where depth would be


def test_gc_removes_inactive_versions_only(store: Path, capsys: pytest.CaptureFixture) -> None:
    split = store / SPLIT
    m = load_manifest(split)
    old = ColumnWriter(split, "depth", "old-version")
    old.write_shard(m.shard_names[0], [])
    building = ColumnWriter(split, "text", "being-built")
    building.write_shard(m.shard_names[0], [])
    past = time.time() - 7200
    for p in [old.dir, *old.dir.iterdir()]:
        os.utime(p, (past, past))
    active = {c: split / c / fp for c, fp in m.columns.items()}
    leftover = active["depth"] / ".train2017-000001.tar.abc123.tmp"  # a writer killed before its rename
    leftover.write_bytes(b"partial")
    os.utime(leftover, (past, past))
    rc, out, _ = _run(capsys, "--shards", str(store), "gc", "--dry-run")
    assert rc == 0 and "would remove" in out and old.dir.is_dir()
    rc, out, _ = _run(capsys, "--shards", str(store), "gc")
    assert rc == 0 and not old.dir.exists() and building.dir.is_dir()  # too recent: a build may be writing it
    assert not leftover.exists() and f"removed {leftover}" in out
    assert f"kept {building.dir}" in out
    assert all(p.is_dir() for p in active.values())
    rc, out, _ = _run(capsys, "--shards", str(store), "gc", "--min-age", "0")
    assert rc == 0 and not building.dir.exists() and all(p.is_dir() for p in active.values())
    assert len(list(StoreReader(store, SPLIT))) == 7


def test_export_is_a_stock_webdataset(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wds = pytest.importorskip("webdataset")
    out_dir = tmp_path / "wds"
    rc, out, _ = _run(capsys, "--shards", str(clean), "export", "--out", str(out_dir))
    assert rc == 0 and "7 samples" in out
    tars = sorted(out_dir.glob("*.tar"))
    assert [t.name for t in tars] == [f"train2017-00000{i}.tar" for i in range(3)]
    ours = list(StoreReader(clean, SPLIT, decode=False))
    theirs = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in ours]
    for a, b in zip(ours, theirs):
        members = {k: v for k, v in a.items() if not k.startswith("__")}
        assert len(members) == 13 and all(b[k] == v for k, v in members.items())
    listed = subprocess.run(["tar", "tf", str(tars[0])], capture_output=True, text=True, check=True).stdout.split()
    assert listed[:2] == [f"{ours[0]['__key__']}.caption.json", f"{ours[0]['__key__']}.depth.json"]
    record = json.loads((out_dir / "export.json").read_text())
    assert record["num_samples"] == 7 and [s["count"] for s in record["shards"]] == [3, 3, 1]
    first = tars[0].read_bytes()
    _run(capsys, "--shards", str(clean), "export", "--out", str(out_dir))
    assert tars[0].read_bytes() == first  # deterministic


def test_caption_lines_say_no_vocab_only_when_there_is_none() -> None:
    from shards.show import _caption_lines

    sample = {"__key__": "000000000001", "__shard__": "s", "meta.json": {}, "tokens.json": {"ids": []}}
    assert _caption_lines(sample, [])[-1] == "tokens:"  # an empty vocabulary (captions of random words)
    assert _caption_lines(sample, None)[-1].endswith("(no vocab.json)")


@pytest.mark.parametrize("command", ["info", "verify", "gc"])
@pytest.mark.parametrize("root", ["http://127.0.0.1:8765/store", "pipe:curl -sf http://127.0.0.1:8765/store/{}"])
def test_commands_that_read_the_store_in_place_refuse_a_remote_root(command: str, root: str,
                                                                    capsys: pytest.CaptureFixture) -> None:
    rc, out, err = _run(capsys, "--shards", root, command)
    assert rc == 2 and out == ""
    assert err.startswith(f"shards: error: `shards {command}` needs a local store root, not {root}: ")
    assert err.count("\n") == 1


def test_a_url_whose_protocol_needs_more_packages_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    from shards.reader import StoreReader

    def missing(*args, **kwargs):
        raise ImportError('HTTPFileSystem requires "requests" and "aiohttp" to be installed')

    monkeypatch.setattr(fsspec, "open", missing)
    with pytest.raises(StoreError, match=r"http:// stores need fsspec's http support \(HTTPFileSystem requires .*\); "
                                         r"for http\(s\): pip install 'fsspec\[http\]'\)$"):
        StoreReader("http://127.0.0.1:8765/store", "train2017")


def test_an_out_that_cannot_be_written_is_a_usage_error(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))  # as non-root
    rc, _, err = _run(capsys, "--shards", str(clean), "show", "--out", str(locked / "sheet.png"))
    sheet = locked / "sheet.png"
    assert rc == 2 and err.strip() == f"shards: error: cannot write --out {sheet}: {locked} is not writable"
    rc, _, err = _run(capsys, "--shards", str(clean), "export", "--out", str(locked / "x"))
    assert rc == 2 and err.strip() == f"shards: error: --out {locked / 'x'}: {locked} is not writable"
    assert not (locked / "x").exists()
