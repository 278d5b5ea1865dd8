"""Garbage collection of the store: removes column versions (fingerprint folders) the manifest does not point at,
and temporary files that killed writers left in the active ones.

A version folder written recently may belong to a build still running (it becomes active only when
complete), so folders and temporary files younger than ``min_age_s`` are kept unless asked otherwise.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from shards.atomic import locked
from shards.layout import manifest_path, split_dir
from shards.manifest import load_manifest
from shards.schema import COLUMNS


@dataclass
class GcResult:
    """Version folders and temporary files removed (or that would be, in a dry run), versions kept as too
    recent, and bytes freed."""

    removed: list[Path] = field(default_factory=list)
    kept_recent: list[Path] = field(default_factory=list)
    bytes: int = 0


def _tree_bytes_and_newest(path: Path) -> tuple[int, float]:
    size, newest = 0, path.stat().st_mtime
    for f in path.rglob("*"):
        st = f.stat()
        newest = max(newest, st.st_mtime)
        size += st.st_size if f.is_file() else 0
    return size, newest


def inactive_versions(root: str | os.PathLike, split: str) -> list[Path]:
    """Version folders ``<split>/<column>/<fingerprint>`` that the manifest does not point at, sorted."""
    path = split_dir(root, split)
    active = load_manifest(path).columns
    found = []
    for column in COLUMNS:
        col = path / column
        if col.is_dir():
            found += [v for v in sorted(col.iterdir()) if v.is_dir() and v.name != active.get(column)]
    return found


def collect_garbage(root: str | os.PathLike, split: str, *, dry_run: bool = False,
                    min_age_s: float = 0.0) -> GcResult:
    """Remove every inactive column version of a split; the active ones are never touched.

    Args:
        root: local store root.
        split: split name.
        dry_run: only report what would be removed.
        min_age_s: keep versions with a file modified less than this many seconds ago.

    Returns:
        What was removed (or would be) and what was kept as too recent.
    """
    result = GcResult()
    now = time.time()
    with locked(manifest_path(split_dir(root, split))):  # no column can be activated meanwhile
        for version in inactive_versions(root, split):
            size, newest = _tree_bytes_and_newest(version)
            if now - newest < min_age_s:
                result.kept_recent.append(version)
                continue
            if not dry_run:
                shutil.rmtree(version)
            result.removed.append(version)
            result.bytes += size
        path = split_dir(root, split)
        for column, fp in load_manifest(path).columns.items():
            for tmp in sorted((path / column / fp).glob(".*.tmp")):  # a writer killed before its rename
                st = tmp.stat()
                if now - st.st_mtime >= min_age_s:
                    if not dry_run:
                        tmp.unlink()
                    result.removed.append(tmp)
                    result.bytes += st.st_size
    return result
