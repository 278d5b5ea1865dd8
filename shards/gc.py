"""Garbage collection of the store: removes column versions (fingerprint folders) the manifest does not point at,
and temporary files that killed writers left in the active ones.

A version folder written recently may belong to a build still running (it becomes active only when
complete), so folders and temporary files younger than ``min_age_s`` are kept unless asked otherwise.
A version is removed only when an existing, complete active version of its column supersedes it: when the
active one is missing, broken or not recorded at all, the other versions may be the only copy of the data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from shards.atomic import locked
from shards.layout import column_dir, manifest_path, split_dir
from shards.manifest import Manifest, StoreError, load_manifest, read_json
from shards.schema import COLUMN_RECORD_NAME, COLUMNS, FINGERPRINT_RE
from shards.writer import ColumnWriter


@dataclass(frozen=True)
class KeptColumn:
    """A column whose versions were all kept because no usable active version supersedes them.

    ``faulty`` is True when the manifest names an active version that is missing or broken (the store fails
    ``shards verify``), False when the manifest has no version of the column at all (e.g. a first build).
    """

    column: str
    versions: tuple[Path, ...]
    reason: str
    faulty: bool


@dataclass
class GcResult:
    """Version folders and temporary files removed (or that would be, in a dry run), versions kept as too
    recent, columns kept whole for want of a usable active version, and bytes freed."""

    removed: list[Path] = field(default_factory=list)
    kept_recent: list[Path] = field(default_factory=list)
    kept_columns: list[KeptColumn] = field(default_factory=list)
    bytes: int = 0


def _tree_bytes_and_newest(path: Path) -> tuple[int, float]:
    size, newest = 0, path.stat().st_mtime
    for f in path.rglob("*"):
        st = f.stat()
        newest = max(newest, st.st_mtime)
        size += st.st_size if f.is_file() else 0
    return size, newest


def is_version_dir(path: Path) -> bool:
    """True for a column version folder: named by a fingerprint (64 hex digits), or holding a ``column.json``
    that records the folder's name as its fingerprint (what ``ColumnWriter`` writes). Files and other
    folders (a user's copy, a backup) are not versions and are never removed."""
    if not path.is_dir() or path.is_symlink():
        return False
    if FINGERPRINT_RE.fullmatch(path.name):
        return True
    try:
        doc = read_json(path / COLUMN_RECORD_NAME)
    except (StoreError, OSError):
        return False
    return isinstance(doc, dict) and doc.get("fingerprint") == path.name


def _active_problem(split_path: Path, manifest: Manifest, column: str) -> str | None:
    """Why the active version of ``column`` cannot supersede the others, or None when it exists and has every
    shard of the plan recorded, with a file of the recorded size."""
    fp = manifest.columns[column]
    if not column_dir(split_path, column, fp).is_dir():
        return f"its active version {fp[:12]} does not exist"
    try:  # one read of column.json for every shard; a broken one is reported as such, not as a missing shard
        done = ColumnWriter(split_path, column, fp).done_shards(manifest.shard_names, check_sha256=False)
    except (StoreError, ValueError) as e:
        return f"its active version {fp[:12]} has no usable column.json ({e})"
    missing = [name for name in manifest.shard_names if name not in done]
    if missing:
        return f"its active version {fp[:12]} lacks shard {missing[0]} (no record, no file or a wrong size)"
    return None


def _plan(split_path: Path, manifest: Manifest) -> tuple[list[Path], list[KeptColumn]]:
    """(versions superseded by a usable active version, columns whose versions must all be kept)."""
    superseded: list[Path] = []
    kept: list[KeptColumn] = []
    for column in COLUMNS:
        col = split_path / column
        if not col.is_dir() or col.is_symlink():  # nothing reached through a symlink is ever removed
            continue
        fp = manifest.columns.get(column)
        others = [v for v in sorted(col.iterdir()) if v.name != fp and is_version_dir(v)]
        if not others:
            continue
        if fp is None:
            kept.append(KeptColumn(column, tuple(others), "the manifest has no active version of it "
                                   "(a first build may still be writing it)", False))
            continue
        problem = _active_problem(split_path, manifest, column)
        if problem:
            kept.append(KeptColumn(column, tuple(others), problem, True))
        else:
            superseded += others
    return superseded, kept


def inactive_versions(root: str | os.PathLike, split: str) -> list[Path]:
    """Version folders ``<split>/<column>/<fingerprint>`` superseded by an existing, complete active version
    of their column, sorted; versions of a column without a usable active version are not listed."""
    path = split_dir(root, split)
    return _plan(path, load_manifest(path))[0]


def collect_garbage(root: str | os.PathLike, split: str, *, dry_run: bool = False,
                    min_age_s: float = 0.0) -> GcResult:
    """Remove every superseded column version of a split; the active ones are never touched.

    Args:
        root: local store root.
        split: split name.
        dry_run: only report what would be removed.
        min_age_s: keep versions with a file modified less than this many seconds ago (>= 0).

    Returns:
        What was removed (or would be), what was kept as too recent, and the columns kept whole because
        their active version is missing, broken or not recorded.

    Raises:
        ValueError: ``min_age_s`` is negative or not a number.
        StoreError: the split has no readable manifest.
    """
    if not min_age_s >= 0:  # also refuses NaN
        raise ValueError(f"min_age_s must be a number of seconds >= 0, got {min_age_s}")
    result = GcResult()
    now = time.time()
    path = split_dir(root, split)
    # no column can be activated meanwhile; a dry run removes nothing, so it needs no lock (nor write access)
    with contextlib.nullcontext() if dry_run else locked(manifest_path(path)):
        manifest = load_manifest(path)
        superseded, result.kept_columns = _plan(path, manifest)
        for version in superseded:
            size, newest = _tree_bytes_and_newest(version)
            if now - newest < min_age_s:
                result.kept_recent.append(version)
                continue
            if not dry_run:
                shutil.rmtree(version)
            result.removed.append(version)
            result.bytes += size
        for column, fp in manifest.columns.items():
            version = column_dir(path, column, fp)
            if version.parent.is_symlink() or version.is_symlink():  # another store's folder, maybe
                continue
            for tmp in sorted(version.glob(".*.tmp")):  # a writer killed before its rename
                if tmp.is_symlink() or not tmp.is_file():
                    continue
                st = tmp.stat()
                if now - st.st_mtime >= min_age_s:
                    if not dry_run:
                        tmp.unlink()
                    result.removed.append(tmp)
                    result.bytes += st.st_size
    return result
