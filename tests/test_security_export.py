"""Untrusted inputs: the `--out` folder of `shards export`. A folder holding other files is refused unless
`--overwrite`, which (like a re-export of the same split) replaces or removes only the files an export writes;
nothing is ever written through a symlink, and every write is a temporary file renamed in the same folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from shards.cli import main
from shards.export import EXPORT_RECORD_NAME, ExportTargetError, export_webdataset
from shards.synthetic import write_synthetic_store

SPLIT, OTHER = "train2017", "val2017"
TARS = [f"{SPLIT}-00000{i}.tar" for i in range(3)]  # 7 samples, 3 per shard
EXPORTED = sorted(TARS + ["vocab.json", EXPORT_RECORD_NAME])


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of two splits (train2017: 3 shards, val2017: 2), only read by these tests."""
    root = tmp_path_factory.mktemp("store")
    write_synthetic_store(root, SPLIT, 7, 3, size=32, seed=4)
    write_synthetic_store(root, OTHER, 4, 2, size=32, seed=5)
    return root


@pytest.fixture(scope="module")
def reference(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """What a fresh export of train2017 writes: name -> bytes."""
    out = tmp_path_factory.mktemp("ref") / "x"
    export_webdataset(clean, SPLIT, out)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(files) == EXPORTED
    return files


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry below ``folder`` (links not followed): relative path -> (kind, content, mode)."""
    found: dict[str, tuple] = {}
    if not os.path.lexists(folder):
        return found
    for entry in os.scandir(folder):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            found[entry.name] = ("link", os.readlink(entry.path))
        elif stat.S_ISDIR(st.st_mode):
            found[entry.name] = ("dir", st.st_mode)
            found.update({f"{entry.name}/{k}": v for k, v in _snapshot(Path(entry.path)).items()})
        elif stat.S_ISREG(st.st_mode):
            found[entry.name] = ("file", Path(entry.path).read_bytes(), st.st_mode)
        else:
            found[entry.name] = ("other", stat.S_IFMT(st.st_mode))
    return found


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _export(capsys: pytest.CaptureFixture, store: Path, out: Path, *flags: str,
            split: str = SPLIT) -> tuple[int, str, str]:
    return _run(capsys, "--shards", str(store), "--split", split, "export", "--out", str(out), *flags)


def _one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def _user_files(out: Path) -> None:
    """A folder of the user's: files an export would write (a vocab.json, a same-named tar) among others."""
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    (out / "vocab.json").write_text('{"words": ["mine"]}\n')
    (out / TARS[0]).write_bytes(b"my own tar, not an export")
    (out / "sub").mkdir()
    (out / "sub" / TARS[1]).write_bytes(b"nested")


# ---- a folder that is not an earlier export of the split is refused, untouched --------------------------------


@pytest.mark.parametrize("contents", ["user files", "only a same-named tar", "only vocab.json", "only a hidden file",
                                      "a malformed export.json", "an export.json that is not an object",
                                      "an export.json naming a split that is no plain name"])
def test_a_foreign_folder_is_refused_and_left_untouched(clean: Path, tmp_path: Path, contents: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    if contents == "user files":
        _user_files(out)
    else:
        out.mkdir()
        name, data = {"only a same-named tar": (TARS[2], b"x"), "only vocab.json": ("vocab.json", b"{}"),
                      "only a hidden file": (".keep", b""),
                      "a malformed export.json": (EXPORT_RECORD_NAME, b'{"split": "train2017"'),
                      "an export.json that is not an object": (EXPORT_RECORD_NAME, b'["train2017"]'),
                      "an export.json naming a split that is no plain name":
                          (EXPORT_RECORD_NAME, b'{"split": "../train2017"}')}[contents]
        (out / name).write_bytes(data)
    before = _snapshot(tmp_path)
    rc, stdout, err = _export(capsys, clean, out)
    line = _one_line(err)
    assert rc == 2 and stdout == ""
    assert line == (f"shards: error: --out {out} is not empty and holds no export of split 'train2017' (no "
                    "export.json of it); export to an empty or new folder, or pass --overwrite to replace only the "
                    "files an export writes there")
    assert _snapshot(tmp_path) == before  # nothing written, replaced or removed, no temporary file either


def test_another_splits_export_is_refused_then_replaced_with_overwrite(clean: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert _export(capsys, clean, out, split=OTHER)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{OTHER}-000000.tar", f"{OTHER}-000001.tar",
                                                            "vocab.json", EXPORT_RECORD_NAME])
    keep = {"notes.tar": b"n", "other-000000.tar": b"o", f"{SPLIT}-000000.tar.bak": b"b", f"x{TARS[1]}": b"x",
            f"{OTHER}-000007.tar": b"not listed in its export.json"}
    for name, data in keep.items():
        (out / name).write_bytes(data)
    before = _snapshot(tmp_path)
    rc, _, err = _export(capsys, clean, out)
    assert rc == 2 and _one_line(err) == (f"shards: error: --out {out} holds the export of split 'val2017'; export "
                                          "'train2017' to a folder of its own (or pass --overwrite to replace that "
                                          "export)")
    assert _snapshot(tmp_path) == before
    rc, stdout, _ = _export(capsys, clean, out, "--overwrite")
    assert rc == 0 and "wrote 3 tars, 7 samples" in stdout
    # val2017's tars (listed in its export.json) are gone; files that merely look like an export's stay
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORTED + list(keep))
    assert {name: (out / name).read_bytes() for name in keep} == keep
    assert json.loads((out / EXPORT_RECORD_NAME).read_text())["split"] == SPLIT


# ---- an earlier export of the same split: re-exported, other files kept ----------------------------------------


def test_a_same_split_reexport_touches_only_the_exports_files(clean: Path, tmp_path: Path, reference: dict,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert _export(capsys, clean, out)[0] == 0
    record = json.loads((out / EXPORT_RECORD_NAME).read_text())
    record["shards"].append({"name": f"{SPLIT}-000009", "count": 1, "sha256": "0" * 64})  # a shard since dropped
    record["shards"].append({"name": "../outside", "count": 1, "sha256": "0" * 64})  # never a path out
    (out / EXPORT_RECORD_NAME).write_text(json.dumps(record))
    (out / f"{SPLIT}-000009.tar").write_bytes(b"stale")
    (tmp_path / "outside.tar").write_bytes(b"outside")
    (out / f".{TARS[1]}.abcd1234.tmp").write_bytes(b"left by a killed export")
    keep = {"notes.txt": b"n", "other-000000.tar": b"o", ".notes.txt.abcd1234.tmp": b"not an export's",
            f"{SPLIT}-000010.tar": b"not listed"}
    for name, data in keep.items():
        (out / name).write_bytes(data)
    (out / TARS[0]).write_bytes(b"damaged")  # refreshed by the re-export
    rc, _, err = _export(capsys, clean, out)
    assert rc == 0 and err == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORTED + list(keep))
    assert {name: (out / name).read_bytes() for name in keep} == keep
    assert {name: (out / name).read_bytes() for name in reference} == reference
    assert (tmp_path / "outside.tar").read_bytes() == b"outside"


def test_a_folder_left_by_a_killed_first_export_is_taken(clean: Path, tmp_path: Path, reference: dict,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{TARS[0]}.k2j4h5g6.tmp").write_bytes(b"half a tar")  # only the temporaries of an export
    (out / ".export.json.zzzz_999.tmp").write_bytes(b"{")
    assert _export(capsys, clean, out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == EXPORTED
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference


# ---- --overwrite: only what an export writes ---------------------------------------------------------------------


def test_overwrite_replaces_only_the_exports_names(clean: Path, tmp_path: Path, reference: dict,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    _user_files(out)
    for name in ("notes.tar", "other-000000.tar", f"{TARS[2]}.orig", f"{SPLIT}-000003.tar", "vocab.json.bak"):
        (out / name).write_bytes(name.encode())
    before = _snapshot(tmp_path)
    rc, _, err = _export(capsys, clean, out, "--overwrite")
    assert rc == 0 and err == ""
    after = _snapshot(tmp_path)
    replaced = {f"out/{n}" for n in EXPORTED}
    assert {k: v for k, v in after.items() if k not in replaced} == {k: v for k, v in before.items()
                                                                      if k not in replaced}
    assert {name: (out / name).read_bytes() for name in reference} == reference


def test_a_failed_overwrite_leaves_the_folder_as_it_was(clean: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from shards.manifest import StoreFault
    from shards.reader import StoreReader

    real = StoreReader.read_shard

    def read_shard(self: StoreReader, shard: str, *args):  # the last shard turns out damaged half-way
        for i, sample in enumerate(real(self, shard, *args)):
            if shard.endswith("2") and i == 0:
                raise StoreFault("shard damaged")
            yield sample

    monkeypatch.setattr(StoreReader, "read_shard", read_shard)
    out = tmp_path / "out"
    _user_files(out)
    before = _snapshot(tmp_path)
    rc, _, err = _export(capsys, clean, out, "--overwrite")
    assert rc == 1 and "shard damaged" in _one_line(err)
    assert _snapshot(tmp_path) == before


def test_a_folder_where_an_export_writes_a_file_is_refused(clean: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert _export(capsys, clean, out)[0] == 0
    (out / TARS[1]).unlink()
    (out / TARS[1]).mkdir()
    (out / TARS[1] / "inside").write_text("x")
    before = _snapshot(tmp_path)
    for flags in ((), ("--overwrite",)):
        rc, _, err = _export(capsys, clean, out, *flags)
        assert rc == 2 and _one_line(err) == (f"shards: error: --out {out}: {TARS[1]} is a folder, where the export "
                                              "writes a file; move it away")
        assert _snapshot(tmp_path) == before


# ---- symlinks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["empty folder", "earlier export", "missing"])
def test_an_out_that_is_a_symlink_is_refused(clean: Path, tmp_path: Path, target: str,
                                             capsys: pytest.CaptureFixture) -> None:
    elsewhere = tmp_path / "elsewhere"
    if target == "empty folder":
        elsewhere.mkdir()
    elif target == "earlier export":
        export_webdataset(clean, SPLIT, elsewhere)
    link = tmp_path / "out"
    link.symlink_to(elsewhere)
    before = _snapshot(tmp_path)
    for flags in ((), ("--overwrite",)):
        rc, _, err = _export(capsys, clean, link, *flags)
        assert rc == 2 and _one_line(err) == (f"shards: error: --out {link} is a symbolic link (to '{elsewhere}'); an "
                                              "export writes nothing through a link: give the folder itself, or a "
                                              "new folder")
        assert _snapshot(tmp_path) == before


def test_symlinks_among_the_exports_files_are_replaced_never_written_through(clean: Path, tmp_path: Path,
                                                                             reference: dict,
                                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert _export(capsys, clean, out)[0] == 0
    victims = {name: tmp_path / f"victim-{name}" for name in (TARS[0], "vocab.json")}
    for name, victim in victims.items():
        victim.write_bytes(b"precious " + name.encode())
        (out / name).unlink()
        (out / name).symlink_to(victim)
    rc, _, _ = _export(capsys, clean, out)
    assert rc == 0
    for name, victim in victims.items():
        assert victim.read_bytes() == b"precious " + name.encode()
        assert not (out / name).is_symlink() and (out / name).read_bytes() == reference[name]
    (out / "vocab.json").unlink()
    (out / "vocab.json").symlink_to(victims["vocab.json"])
    rc, _, _ = _export(capsys, clean, out, "--columns", "base", "depth")  # no tokens: vocab.json goes
    assert rc == 0 and not os.path.lexists(out / "vocab.json")
    assert victims["vocab.json"].read_bytes() == b"precious vocab.json"


def test_a_symlinked_export_json_is_no_record_and_is_replaced_as_a_link(clean: Path, tmp_path: Path,
                                                                        reference: dict,
                                                                        capsys: pytest.CaptureFixture) -> None:
    elsewhere = tmp_path / "elsewhere"
    export_webdataset(clean, SPLIT, elsewhere)  # a real record of this split, outside the folder
    out = tmp_path / "out"
    out.mkdir()
    (out / EXPORT_RECORD_NAME).symlink_to(elsewhere / EXPORT_RECORD_NAME)
    (out / TARS[1]).symlink_to(elsewhere / TARS[1])
    (out / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    rc, _, err = _export(capsys, clean, out)
    assert rc == 2 and "holds no export of split 'train2017'" in _one_line(err)  # the link is not followed
    assert _snapshot(tmp_path) == before
    outside = _snapshot(elsewhere)
    rc, _, _ = _export(capsys, clean, out, "--overwrite")
    assert rc == 0 and _snapshot(elsewhere) == outside
    for name in (EXPORT_RECORD_NAME, TARS[1]):
        assert not (out / name).is_symlink()
    assert {name: (out / name).read_bytes() for name in reference} == reference
    assert (out / "notes.txt").read_text() == "mine"


def test_an_export_json_that_is_a_fifo_is_no_record(clean: Path, tmp_path: Path, reference: dict,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / EXPORT_RECORD_NAME)  # opening it to read would wait for a writer
    rc, _, err = _export(capsys, clean, out)
    assert rc == 2 and "holds no export" in _one_line(err)
    assert stat.S_ISFIFO(os.lstat(out / EXPORT_RECORD_NAME).st_mode)
    assert _export(capsys, clean, out, "--overwrite")[0] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference


def test_an_out_that_is_a_file_is_refused(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"a file")
    for flags in ((), ("--overwrite",)):
        rc, _, err = _export(capsys, clean, out, *flags)
        assert rc == 2 and _one_line(err) == f"shards: error: --out {out} is a file, not a folder"
        assert out.read_bytes() == b"a file"
    with pytest.raises(ExportTargetError):
        export_webdataset(clean, SPLIT, out, overwrite=True)


# ---- every write is a temporary file renamed in the folder -------------------------------------------------------


def test_every_file_is_written_beside_its_name_and_renamed(clean: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    out = tmp_path / "out"
    _user_files(out)
    renamed: list[tuple[Path, Path]] = []
    made: list[Path] = []
    real_replace, real_mkstemp = os.replace, tempfile.mkstemp

    def replace(src, dst, *args, **kwargs):
        renamed.append((Path(src), Path(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(Path(name))
        return fd, name

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    export_webdataset(clean, SPLIT, out, overwrite=True)
    assert sorted(dst.name for _, dst in renamed) == EXPORTED  # each of the export's files appears by a rename
    assert all(src.parent == dst.parent == out and src in made and src.name.startswith(f".{dst.name}.")
               for src, dst in renamed)
    assert all(not p.exists() for p in made)  # no temporary file left
