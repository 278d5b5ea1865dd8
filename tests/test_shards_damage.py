"""Damaged or hand-edited stores: malformed manifest and column.json, gc that must not lose data, export of a
damaged store, verify --no-decode wording, and show's output format."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from shards_stores import synthetic_store_fixtures

from shards.cli import main
from shards.export import export_webdataset
from shards.gc import collect_garbage, inactive_versions, is_version_dir
from shards.layout import column_dir, column_record_path, manifest_path
from shards.manifest import StoreError, StoreFault, load_manifest
from shards.reader import StoreReader
from shards.schema import COLUMNS
from shards.writer import ColumnWriter

SPLIT = "train2017"
clean, store = synthetic_store_fixtures(SPLIT, num_samples=7, shard_size=3, size=48, seed=3)
OLD_FP = "a" * 64  # fingerprint of a superseded version written by the tests


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def _edit_manifest(store: Path, edit: Any) -> None:
    """Replace the manifest by ``edit`` (a JSON value) or by ``edit(doc)`` for a callable."""
    path = manifest_path(store / SPLIT)
    doc = json.loads(path.read_text())
    if callable(edit):
        edit(doc)
    else:
        doc = edit
    path.write_text(json.dumps(doc))


def _age(path: Path, seconds: float = 7200) -> None:
    past = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (past, past))


def _old_version(store: Path, column: str, fp: str = OLD_FP) -> Path:
    """An aged, superseded version of ``column`` holding one empty shard; its folder."""
    split = store / SPLIT
    writer = ColumnWriter(split, column, fp)
    writer.write_shard(load_manifest(split).shard_names[0], [])
    _age(writer.dir)
    return writer.dir


# ---- 1. a manifest or column.json of the wrong shape --------------------------------------------------------


def _drop(key: str) -> Any:
    return lambda d: d.pop(key)


def _set(path: tuple, value: Any) -> Any:
    def edit(d: dict) -> None:
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


BAD_MANIFESTS = {
    "empty object": ({}, "missing split"),
    "array": ([1, 2], "an array, not an object"),
    "shards a string": ({"shards": "x"}, "missing split"),
    "no columns": (_drop("columns"), "missing columns"),
    "shards a string, other keys fine": (_set(("shards",), "x"), "shards is \"x\", not a list"),
    "size a string": (_set(("size",), "48"), "size is \"48\", not an integer"),
    "size zero": (_set(("size",), 0), "size is 0"),
    "shard entry a list": (_set(("shards", 0), ["train2017-000000", 3]), "shards[0]"),
    "shard count a string": (_set(("shards", 0, "count"), "3"), "shards[0]"),
    "shard count a bool": (_set(("shards", 0, "count"), True), "shards[0]"),
    "columns a list": (_set(("columns",), ["base"]), "columns is [\"base\"], not an object"),
    "fingerprint a number": (_set(("columns", "depth"), 5), "columns['depth'] is 5, not a fingerprint"),
    "fingerprint a path": (_set(("columns", "depth"), "../../x"), "not a fingerprint"),
    "unknown column": (_set(("columns", "nosuch"), "0" * 64), "unknown column 'nosuch'"),
    "unknown key": (_set(("extra",), 1), "unknown key(s) 'extra'"),
}


def test_binary_manifest_is_corrupt_json(store: Path, capsys: pytest.CaptureFixture) -> None:
    manifest_path(store / SPLIT).write_bytes(b"\xff\xfe\x00 not text")
    rc, _, err = _run(capsys, "--shards", str(store), "verify")
    assert rc == 1 and "manifest.json: corrupt JSON" in _one_line(err)  # a damaged store, as verify's faults


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_malformed_manifest_is_one_line_exit_1_everywhere(store: Path, tmp_path: Path, case: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    edit, needle = BAD_MANIFESTS[case]
    _edit_manifest(store, edit)
    path = manifest_path(store / SPLIT)
    for command in (["info"], ["verify"], ["show"], ["gc", "--min-age", "0"], ["export", "--out", str(tmp_path / "x")]):
        rc, out, err = _run(capsys, "--shards", str(store), *command)
        line = _one_line(err)
        assert rc == 1 and out == "" and line.startswith(f"shards: error: {path}: not a store manifest ("), command
        assert needle in line, (command, line)
    assert not (tmp_path / "x").exists()
    assert sum(1 for _ in (store / SPLIT).rglob("*.tar")) == len(COLUMNS) * 3  # gc removed nothing
    with pytest.raises(StoreError, match="not a store manifest"):
        load_manifest(store / SPLIT)
    with pytest.raises(StoreError, match="not a store manifest"):  # the reader training uses
        StoreReader(store, SPLIT)


def test_other_store_format_is_named(store: Path, capsys: pytest.CaptureFixture) -> None:
    _edit_manifest(store, {"format": "ymap-store/9", "whatever": 1})
    rc, _, err = _run(capsys, "--shards", str(store), "info")
    assert rc == 2 and "store format 'ymap-store/9' is not 'ymap-store/2'" in _one_line(err)


@pytest.mark.parametrize("doc", [[], {"fingerprint": "x"}, "FP-SHARDS"])
def test_malformed_column_record(store: Path, tmp_path: Path, doc: Any, capsys: pytest.CaptureFixture) -> None:
    split = store / SPLIT
    fp = load_manifest(split).columns["depth"]
    record = column_record_path(column_dir(split, "depth", fp))
    if doc == "FP-SHARDS":  # right fingerprint, a shard record of the wrong shape
        doc = json.loads(record.read_text())
        doc["shards"]["train2017-000001"]["bytes"] = "many"
    record.write_text(json.dumps(doc))
    rc, _, err = _run(capsys, "--shards", str(store), "info")
    assert rc == 1 and f"column 'depth': {record}: not a column record (" in _one_line(err)
    rc, _, err = _run(capsys, "--shards", str(store), "verify")
    assert rc == 1 and "column 'depth'" in _one_line(err) and "not a column record" in err
    rc, _, err = _run(capsys, "--shards", str(store), "export", "--out", str(tmp_path / "x"))
    assert rc == 1 and "not a column record" in _one_line(err) and not (tmp_path / "x").exists()
    with pytest.raises(StoreError, match="not a column record"):
        ColumnWriter(split, "depth", fp).records()


# ---- 2. gc never removes the only copy of a column -----------------------------------------------------------


def test_gc_keeps_a_column_whose_active_version_is_missing(store: Path, capsys: pytest.CaptureFixture) -> None:
    split = store / SPLIT
    m = load_manifest(split)
    real_depth = split / "depth" / m.columns["depth"]
    old_normals = _old_version(store, "normals")
    _edit_manifest(store, _set(("columns", "depth"), "0" * 64))
    assert inactive_versions(store, SPLIT) == [old_normals]
    rc, out, _ = _run(capsys, "--shards", str(store), "gc", "--min-age", "0")
    assert rc == 1 and real_depth.is_dir() and len(list(real_depth.glob("*.tar"))) == 3
    assert not old_normals.exists() and f"removed {old_normals}" in out  # other columns are still collected
    (line,) = [x for x in out.splitlines() if "'depth'" in x]
    assert line.startswith("kept column 'depth' whole (1 inactive version(s)): its active version 000000000000 "
                           "does not exist") and "verify" in line
    rc, out, _ = _run(capsys, "--shards", str(store), "gc", "--min-age", "0", "--dry-run")
    assert rc == 1 and real_depth.is_dir() and "kept column 'depth' whole" in out


def test_gc_keeps_a_column_absent_from_the_manifest(store: Path, capsys: pytest.CaptureFixture) -> None:
    split = store / SPLIT
    text = split / "text" / load_manifest(split).columns["text"]
    _edit_manifest(store, lambda d: d["columns"].pop("text"))
    rc, out, _ = _run(capsys, "--shards", str(store), "gc", "--min-age", "0")
    assert rc == 0 and text.is_dir() and len(list(text.glob("*.tar"))) == 3
    assert "kept column 'text' whole (1 inactive version(s)): the manifest has no active version" in out
    assert "removed 0 inactive version(s)" in out


def test_gc_keeps_old_versions_while_the_active_one_is_incomplete(store: Path, capsys: pytest.CaptureFixture) -> None:
    split = store / SPLIT
    old = _old_version(store, "groups")
    active = split / "groups" / load_manifest(split).columns["groups"]
    (active / "train2017-000002.tar").unlink()
    result = collect_garbage(store, SPLIT, min_age_s=0)
    assert old.is_dir() and result.removed == []
    (kept,) = result.kept_columns
    assert kept.column == "groups" and kept.versions == (old,) and kept.faulty
    assert "lacks shard train2017-000002" in kept.reason


def test_gc_removes_only_fingerprint_folders(store: Path, capsys: pytest.CaptureFixture) -> None:
    split = store / SPLIT
    old = _old_version(store, "depth")
    active = split / "depth" / load_manifest(split).columns["depth"]
    backup = split / "depth" / "backup"  # a user's copy of the active version: not a version of its own
    shutil.copytree(active, backup)
    note = split / "depth" / "README.txt"
    note.write_text("kept by hand")
    _age(backup)
    _age(note)
    rc, out, _ = _run(capsys, "--shards", str(store), "gc", "--min-age", "0")
    assert rc == 0 and not old.exists() and backup.is_dir() and note.read_text() == "kept by hand"
    assert out.splitlines()[-1].startswith("removed 1 inactive version(s)")
    assert not is_version_dir(backup) and not is_version_dir(note) and is_version_dir(active)
    rc, out, _ = _run(capsys, "--shards", str(store), "info", "--json")
    depth = next(c for c in json.loads(out)["columns"] if c["column"] == "depth")
    assert rc == 0 and depth["inactive"] == []  # info lists versions only, not the backup


@pytest.mark.parametrize("age", ["-1", "nan"])
def test_gc_negative_min_age_is_a_usage_error(store: Path, age: str, capsys: pytest.CaptureFixture) -> None:
    old = _old_version(store, "depth")
    rc, out, err = _run(capsys, "--shards", str(store), "gc", "--min-age", age)
    assert rc == 2 and out == "" and "--min-age must be a number of seconds >= 0" in _one_line(err)
    assert old.is_dir()
    with pytest.raises(ValueError, match="min_age_s"):
        collect_garbage(store, SPLIT, min_age_s=float(age))


# ---- 4. export checks its sources and leaves nothing half-written --------------------------------------------


def _shard(store: Path, column: str, shard: str) -> Path:
    return Path(StoreReader(store, SPLIT, [column]).shard_location(column, shard))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def test_export_records_the_sha256_of_what_it_wrote(clean: Path, tmp_path: Path) -> None:
    from shards.writer import file_sha256

    result = export_webdataset(clean, SPLIT, tmp_path / "x")
    record = json.loads((tmp_path / "x" / "export.json").read_text())
    assert [s["sha256"] for s in record["shards"]] == [file_sha256(p) for p in result.paths]
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == (["export.json"] + [p.name for p in result.paths]
                                                                  + ["vocab.json"])


def test_an_export_folder_holds_one_split(clean: Path, tmp_path: Path) -> None:
    from shards.export import ExportTargetError

    export_webdataset(clean, SPLIT, tmp_path / "x")
    export_webdataset(clean, SPLIT, tmp_path / "x")  # the same split again: replaced
    record = json.loads((tmp_path / "x" / "export.json").read_text())
    record["split"] = "val2017"  # as if val2017 had been exported there
    (tmp_path / "x" / "export.json").write_text(json.dumps(record))
    with pytest.raises(ExportTargetError, match=r"holds the export of split 'val2017'; export 'train2017' to a "
                                                r"folder of its own"):
        export_webdataset(clean, SPLIT, tmp_path / "x")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_export_refuses_a_damaged_shard(store: Path, tmp_path: Path, damage: str,
                                        capsys: pytest.CaptureFixture) -> None:
    f = _shard(store, "normals", "train2017-000002")
    if damage == "flip":
        _flip(f, 512 + 100)  # inside the first sample's normals.png
    else:
        f.write_bytes(f.read_bytes()[:2000])
    out_dir = tmp_path / "x"
    rc, out, err = _run(capsys, "--shards", str(store), "export", "--out", str(out_dir))
    line = _one_line(err)
    assert rc == 1 and out == ""
    assert line.startswith("shards: error: shard train2017-000002 column 'normals': ") and str(f) in line
    assert ("2000 bytes, column.json says" if damage == "truncate" else "sha256 differs from column.json") in line
    assert not out_dir.exists()  # shards 0 and 1 were fine, but nothing of the export is left
    with pytest.raises(StoreFault, match="train2017-000002 column 'normals'"):
        export_webdataset(store, SPLIT, out_dir, ["base", "normals"])


def test_export_reads_each_source_shard_once(clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shards.reader
    import shards.streams

    opened: list[str] = []
    real = shards.streams.open_stream

    def counting(location: str):
        opened.append(location)
        return real(location)

    for module in (shards.streams, shards.reader):  # a check before packing would open every tar twice
        monkeypatch.setattr(module, "open_stream", counting)
    reader = StoreReader(clean, SPLIT)
    export_webdataset(clean, SPLIT, tmp_path / "x")
    expected = [reader.shard_location(c, s) for s in reader.manifest.shard_names for c in reader.columns]
    assert [loc for loc in opened if loc.endswith(".tar")] == expected


def test_export_names_a_missing_source_shard(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = _shard(store, "depth", "train2017-000001")
    f.unlink()
    with pytest.raises(StoreFault, match=r"shard train2017-000001 column 'depth': cannot open .*depth"):
        export_webdataset(store, SPLIT, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # through a pipe: command, the failure shows when its output ends; still a fault of that shard (exit 1)
    rc, _, err = _run(capsys, "--shards", f"pipe:cat {store}/{{}} 2>/dev/null", "export", "--out", str(tmp_path / "y"))
    assert rc == 1 and "shard train2017-000001 column 'depth': cannot read pipe:cat" in _one_line(err)
    assert not (tmp_path / "y").exists()


def test_failed_export_keeps_a_previous_one(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "x"
    export_webdataset(store, SPLIT, out_dir)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    _flip(_shard(store, "depth", "train2017-000001"), 512 + 100)
    rc, _, _ = _run(capsys, "--shards", str(store), "export", "--out", str(out_dir))
    assert rc == 1 and {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # no temporary files either


def test_export_removes_its_temporary_tars_on_any_error(store: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = StoreReader.read_shard

    def read_shard(self: StoreReader, shard: str, *args: Any):  # the third shard breaks half-way through
        for i, sample in enumerate(real(self, shard, *args)):
            if shard.endswith("2") and i == 0:
                raise StoreError("disk went away")
            yield sample

    monkeypatch.setattr(StoreReader, "read_shard", read_shard)
    (tmp_path / "x").mkdir()
    with pytest.raises(StoreError, match="disk went away"):
        export_webdataset(store, SPLIT, tmp_path / "x")
    assert list((tmp_path / "x").iterdir()) == []


# ---- 3. verify --no-decode does not claim members were decoded ----------------------------------------------


def _verify(store: Path, capsys: pytest.CaptureFixture, *flags: str) -> tuple[int, str]:
    rc = main(["--shards", str(store), "--split", SPLIT, "verify", *flags])
    return rc, _one_line(capsys.readouterr().err)


def test_verify_no_decode_says_members_were_not_decoded(store: Path, capsys: pytest.CaptureFixture) -> None:
    f = _shard(store, "normals", "train2017-000000")
    _flip(f, 512 + 100)  # inside a PNG: the tar parses, the member no longer decodes
    rc, line = _verify(store, capsys, "--no-decode")
    assert rc == 1 and "column 'normals'" in line and "sha256 differs from column.json" in line
    assert "decodes" not in line and "not decoded" in line and "without --no-decode" in line
    rc, line = _verify(store, capsys)
    assert rc == 1 and "member normals.png: does not decode" in line


def test_verify_damage_outside_every_member(store: Path, capsys: pytest.CaptureFixture) -> None:
    f = _shard(store, "normals", "train2017-000000")
    _flip(f, f.stat().st_size - 1)  # the zero padding after the end-of-archive blocks: no member changes
    rc, line = _verify(store, capsys)
    assert rc == 1 and "yet every member parses and decodes" in line
    rc, line = _verify(store, capsys, "--no-decode")
    assert rc == 1 and "every member parses, but members were not decoded" in line


# ---- 5. show writes only the formats it names ----------------------------------------------------------------


def test_show_refuses_an_unknown_image_suffix(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = _run(capsys, "--shards", str(clean), "show", "--out", str(tmp_path / "x.gif"))
    assert rc == 2 and out == "" and "written as PNG or JPEG" in _one_line(err) and ".gif" in err
    assert not (tmp_path / "x.gif").exists()
    rc, out, _ = _run(capsys, "--shards", str(clean), "show", "--out", str(tmp_path / "x.JPEG"))
    assert rc == 0 and (tmp_path / "x.JPEG").read_bytes()[:3] == b"\xff\xd8\xff"
    rc, out, _ = _run(capsys, "--shards", str(clean), "show", "--out", str(tmp_path / "x.png"))
    assert rc == 0 and (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the split's own files: vocab.json and rejected.jsonl ------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "array", "missing"])
def test_verify_checks_the_vocabulary_the_tokens_need(store: Path, capsys: pytest.CaptureFixture,
                                                      damage: str) -> None:
    vocab = store / SPLIT / "vocab.json"
    vocab.write_text("[]" if damage == "array" else "garbage") if damage != "missing" else vocab.unlink()
    rc, line = _verify(store, capsys)
    assert rc == 1 and line.startswith("shards verify: column 'tokens': ") and "(the tokens column needs it)" in line
    assert ("not found" if damage == "missing" else "is malformed") in line
    if damage == "array":
        rc, _, err = _run(capsys, "--shards", str(store), "info")
        assert rc == 1 and "vocab.json: not a vocabulary" in _one_line(err)
    assert main(["--shards", str(store), "--split", SPLIT, "verify", "--columns", "base", "depth"]) == 0


def test_verify_counts_the_rejected_lines(store: Path, capsys: pytest.CaptureFixture) -> None:
    rejected = store / SPLIT / "rejected.jsonl"
    assert load_manifest(store / SPLIT).rejected == 0 and not rejected.exists()
    assert main(["--shards", str(store), "--split", SPLIT, "verify"]) == 0
    rejected.write_text(json.dumps({"id": 5, "reason": "truncated"}) + "\n")
    rc, line = _verify(store, capsys)
    assert rc == 1 and "rejected.jsonl holds 1 line(s); the manifest counts 0 rejected image(s)" in line
    rejected.write_text("{not json\n")
    rc, line = _verify(store, capsys)
    assert rc == 1 and "rejected.jsonl is unreadable or malformed (JSONDecodeError" in line


def test_export_carries_the_vocabulary_and_refuses_an_out_it_would_damage(store: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    export_webdataset(store, SPLIT, tmp_path / "x")
    assert (tmp_path / "x" / "vocab.json").read_bytes() == (store / SPLIT / "vocab.json").read_bytes()
    export_webdataset(store, SPLIT, tmp_path / "x", ["base", "depth"])
    assert not (tmp_path / "x" / "vocab.json").exists()  # no tokens, no vocabulary (nor the last export's)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    fp = load_manifest(store / SPLIT).columns["base"]
    (tmp_path / "afile").write_text("x")
    for out, problem in ((tmp_path / "afile", "is a file, not a folder"),
                         (tmp_path / "afile" / "sub", f"{tmp_path / 'afile'} is a file, not a folder"),
                         (store / SPLIT / "base" / fp, "is inside the store"), (store, "is inside the store")):
        rc, _, err = _run(capsys, "--shards", str(store), "export", "--out", str(out))
        assert rc == 2 and problem in _one_line(err), out
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_damage_met_by_info_and_show_is_exit_1(store: Path, capsys: pytest.CaptureFixture) -> None:
    f = _shard(store, "depth", "train2017-000000")
    f.write_bytes(f.read_bytes()[:1500])
    key = next(iter(StoreReader(store, SPLIT, ["base"], decode=False).read_shard("train2017-000000")))["__key__"]
    rc, _, err = _run(capsys, "--shards", str(store), "show", key, "--out", str(store.parent / "s.png"))
    assert rc == 1 and "truncated tar" in _one_line(err)
    column_record_path(f.parent).unlink()
    rc, _, err = _run(capsys, "--shards", str(store), "info")
    assert rc == 1 and _one_line(err).startswith("shards: error: column 'depth': ") and "not found" in err


def test_gc_dry_run_takes_no_lock(store: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run works on a store mounted read-only, where the manifest's lock file cannot be created."""
    import errno

    import shards.gc

    def read_only(path: Any):
        raise OSError(errno.EROFS, "Read-only file system", f"{path}.lock")

    _old_version(store, "depth")
    monkeypatch.setattr(shards.gc, "locked", read_only)
    rc, out, _ = _run(capsys, "--shards", str(store), "gc", "--min-age", "0", "--dry-run")
    assert rc == 0 and "would remove" in out and OLD_FP in out
    rc, _, err = _run(capsys, "--shards", str(store), "gc", "--min-age", "0")
    assert rc == 1 and "Read-only file system" in _one_line(err)


def test_verify_checks_the_structure_of_pose_json(store: Path, capsys: pytest.CaptureFixture) -> None:
    """What the student's loader relies on (shards.pose); a recorded shard whose pose.json is {} is a fault."""
    from shards_stores import set_pose

    keys = set_pose(store / SPLIT, {})
    rc, line = _verify(store, capsys)
    assert rc == 1 and f"column 'pose' key {keys[0]}: member pose.json: is not a pose record: lacks 'persons'" in line


@pytest.mark.parametrize("cut_after, whole", [("the last member of its last sample", 3),
                                             ("the first member of its last sample", 2)])
def test_a_cut_shard_counts_the_whole_samples_before_the_cut(clean: Path, tmp_path: Path, cut_after: str, whole: int,
                                                             capsys: pytest.CaptureFixture) -> None:
    import tarfile

    store = tmp_path / "cut"
    shutil.copytree(clean, store)
    tar = _shard(store, "base", f"{SPLIT}-000001")  # 3 samples of 2 members each
    with tarfile.open(tar) as t:
        members = t.getmembers()
    assert len(members) == 6
    keep = members[5] if "last member" in cut_after else members[4]
    end = keep.offset_data + -(-keep.size // 512) * 512  # cut at that member's end: no end-of-archive marker
    tar.write_bytes(tar.read_bytes()[:end])
    rc, _, err = _run(capsys, "verify", "--shards", str(store), "--split", SPLIT, "--columns", "base")
    assert rc == 1 and f"after {whole} whole samples" in err, err
    with pytest.raises(StoreFault, match=f"after {whole} whole samples"):
        list(StoreReader(store, SPLIT, ["base"], check=False))


def test_export_records_the_brace_range_of_its_tars(clean: Path, tmp_path: Path) -> None:
    from shards.export import brace_range

    export_webdataset(clean, SPLIT, tmp_path / "wds")
    record = json.loads((tmp_path / "wds" / "export.json").read_text())
    assert record["urls"] == f"{SPLIT}-{{000000..000002}}.tar"  # 7 samples in shards of 3
    assert brace_range(["a-000007"]) == "a-000007.tar"
    assert brace_range(["a-000001", "a-000003"]) == "{a-000001,a-000003}.tar"
    braceexpand = pytest.importorskip("braceexpand")
    assert sorted(braceexpand.braceexpand(record["urls"])) == sorted(p.name for p in (tmp_path / "wds").glob("*.tar"))


def test_verify_lists_stray_files_as_warnings(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "stray"
    shutil.copytree(clean, store)
    rc, _, err = _run(capsys, "verify", "--shards", str(store), "--split", SPLIT)
    assert rc == 0 and "warning" not in err, err  # a store as the tools wrote it has none
    fp = load_manifest(store / SPLIT).columns["depth"]
    (store / SPLIT / "notes.txt").write_text("mine")
    (store / SPLIT / "depth" / fp / f"{SPLIT}-000000 (copy).tar").write_bytes(b"")
    rc, out, err = _run(capsys, "verify", "--shards", str(store), "--split", SPLIT)
    assert rc == 0 and out.startswith("OK:"), (out, err)
    assert err.splitlines() == [
        f"shards verify: warning: stray file notes.txt in split {SPLIT!r} (no tool wrote it there)",
        f"shards verify: warning: stray file depth/{fp[:12]}.../{SPLIT}-000000 (copy).tar in split {SPLIT!r} "
        "(no tool wrote it there)"]


def test_verify_faults_columns_the_last_build_asked_for_and_did_not_make(clean: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "failed"
    shutil.copytree(clean, store)
    report = store / SPLIT / "build-report.json"
    report.write_text(json.dumps({"ok": True, "requested_columns": ["base", "depth"]}))
    assert _run(capsys, "verify", "--shards", str(store), "--split", SPLIT)[0] == 0
    _edit_manifest(store, lambda doc: doc["columns"].pop("caption"))  # a build whose caption units all failed
    report.write_text(json.dumps({"ok": False, "requested_columns": ["base", "caption", "tokens"]}))
    _edit_manifest(store, lambda doc: doc["columns"].pop("tokens"))
    rc, out, err = _run(capsys, "verify", "--shards", str(store), "--split", SPLIT, "--all")
    assert rc == 1 and not out.startswith("OK"), (out, err)
    assert "column 'caption': not built: the last build (build-report.json, ok false) asked for it" in err
    assert "column 'tokens': not built" in err
    report.write_text(json.dumps({"ok": False}))  # the report of an older build: nothing to compare
    assert _run(capsys, "verify", "--shards", str(store), "--split", SPLIT)[0] == 0
