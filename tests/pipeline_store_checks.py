"""Checks the build tests share: a built split is complete, aligned and accounts for every image id."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from pipeline.coco import load_split
from shards.manifest import load_manifest
from shards.schema import BUILD_LOCK_NAME, COLUMNS, key_of
from shards.verify import verify_split


def tar_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        keys = [m.name.partition(".")[0] for m in tar.getmembers()]
    return list(dict.fromkeys(keys))


def check_split(store: Path, coco_root: Path, split: str) -> dict[str, int]:
    """Assert the split is fully built and passes ``shards verify``; returns {"samples": n, "rejected": m}."""
    verified = verify_split(store, split)
    assert verified.ok, [str(f) for f in verified.faults[:3]]
    split_path = store / split
    m = load_manifest(split_path)
    assert set(m.columns) == set(COLUMNS), f"active columns {sorted(m.columns)}"
    keys: list[str] = []
    for entry in m.shards:
        base_keys = tar_keys(split_path / "base" / m.columns["base"] / f"{entry.name}.tar")
        assert len(base_keys) == entry.count
        for col, fp in m.columns.items():
            assert tar_keys(split_path / col / fp / f"{entry.name}.tar") == base_keys, (col, entry.name)
        keys += base_keys
    rejected = [json.loads(line) for line in (split_path / "rejected.jsonl").read_text().splitlines()]
    rejected_keys = [key_of(r["id"]) for r in rejected]
    assert all(r["reason"] for r in rejected)
    all_keys = [key_of(r.image_id) for r in load_split(coco_root, split)]
    assert sorted(keys + rejected_keys) == all_keys  # every id exactly once: a sample or a rejected line
    assert m.num_samples == len(keys) and m.rejected == len(rejected)
    return {"samples": len(keys), "rejected": len(rejected)}


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``root`` whose path does not start with one of ``skip``, but for the
    split's build lock (every build takes it: its time changes, its content is empty between builds)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(skip) and p.name != BUILD_LOCK_NAME:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def tar_files(split_path: Path) -> dict[str, bytes]:
    """Every column tar of a split by relative path, with its bytes."""
    return {p.relative_to(split_path).as_posix(): p.read_bytes() for p in sorted(split_path.rglob("*.tar"))}
