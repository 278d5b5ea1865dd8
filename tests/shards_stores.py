"""Synthetic-store fixtures shared by the `shards` tests: one clean store per module, a writable copy per test."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from shards.synthetic import write_synthetic_store


def synthetic_store_fixtures(split: str, *, num_samples: int, shard_size: int, size: int,
                             seed: int) -> tuple[Any, Any]:
    """Fixtures ``clean`` (a synthetic store written once per module) and ``store`` (a fresh copy per test).

    Assign both at module level of a test file: ``clean, store = synthetic_store_fixtures(...)``.

    Args:
        split: split to write.
        num_samples, shard_size, size, seed: as ``write_synthetic_store`` takes them.

    Returns:
        The ``(clean, store)`` fixtures; tests that change the store use ``store``.
    """

    @pytest.fixture(scope="module")
    def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
        root = tmp_path_factory.mktemp("clean")
        write_synthetic_store(root, split, num_samples=num_samples, shard_size=shard_size, size=size, seed=seed)
        return root

    @pytest.fixture()
    def store(tmp_path: Path, clean: Path) -> Path:
        shutil.copytree(clean, tmp_path / "s")
        return tmp_path / "s"

    return clean, store


def set_pose(split_path: Path, pose: object) -> list[str]:
    """Rewrite every pose.json of the split's first pose shard with ``pose`` (a valid shard, recorded in its
    column.json, so only what the student makes of the value is tested); returns the shard's keys."""
    import json

    from shards.manifest import load_manifest
    from shards.streams import iter_samples
    from shards.writer import ColumnWriter

    manifest = load_manifest(split_path)
    writer = ColumnWriter(split_path, "pose", manifest.columns["pose"])
    name = manifest.shard_names[0]
    with open(writer.dir / f"{name}.tar", "rb") as f:
        samples = list(iter_samples(f))
    for _, members in samples:
        members["pose.json"] = json.dumps(pose).encode()
    writer.write_encoded_shard(name, samples)
    return [key for key, _ in samples]
