"""The per-split ``manifest.json``: shard list, sample counts and the ACTIVE fingerprint of every column.

A column's pointer moves atomically (lock, rewrite to a temporary file, rename) and only once every shard
of the manifest has a record in that column version with the same keys as the base column.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards.atomic import atomic_write_json, locked
from shards.layout import column_dir, manifest_path
from shards.schema import DEFAULT_SHARD_SIZE, DEFAULT_STORE_SIZE, STORE_FORMAT
from shards.writer import ColumnWriter


class StoreError(RuntimeError):
    """The store on disk is missing, incomplete or inconsistent; the message names the path and the fix."""


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: corrupt JSON ({e})") from None


@dataclass
class ShardEntry:
    name: str
    count: int


@dataclass
class Manifest:
    """Contents of ``manifest.json``.

    ``shards`` is the shard plan: every column holds exactly these shards with these counts.
    ``columns`` maps column name -> active fingerprint. ``config`` is the resolved build configuration.
    """

    split: str
    size: int = DEFAULT_STORE_SIZE
    shard_size: int = DEFAULT_SHARD_SIZE
    shards: list[ShardEntry] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    rejected: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    format: str = STORE_FORMAT

    @property
    def num_samples(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def shard_names(self) -> list[str]:
        return [s.name for s in self.shards]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_samples"] = self.num_samples
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d.pop("num_samples", None)
        d["shards"] = [ShardEntry(**s) for s in d.get("shards", [])]
        return cls(**d)


def load_manifest(split_path: str | os.PathLike) -> Manifest:
    """Read a split's manifest; a missing one is a StoreError naming the path."""
    path = manifest_path(split_path)
    if not path.exists():
        raise StoreError(f"{path}: no manifest; is {Path(split_path).parent} a store and "
                         f"{Path(split_path).name!r} a split built into it?")
    m = Manifest.from_json(read_json(path))
    if m.format != STORE_FORMAT:
        raise StoreError(f"{path}: store format {m.format!r} is not {STORE_FORMAT!r}")
    return m


def save_manifest(split_path: str | os.PathLike, manifest: Manifest) -> None:
    """Write the manifest atomically (callers that read-modify-write hold ``locked(manifest_path)``)."""
    atomic_write_json(manifest_path(split_path), manifest.to_json())


def update_manifest(split_path: str | os.PathLike, **changes: Any) -> Manifest:
    """Atomically change top-level manifest fields under the manifest lock."""
    path = manifest_path(split_path)
    with locked(path):
        m = load_manifest(split_path)
        for k, v in changes.items():
            setattr(m, k, v)
        save_manifest(split_path, m)
    return m


def missing_shards(split_path: str | os.PathLike, manifest: Manifest, column: str, fingerprint: str) -> list[str]:
    """Shards of the plan that the given column version lacks, or whose keys differ from the base column's."""
    records = ColumnWriter(split_path, column, fingerprint).records()
    base = None
    if column != "base" and "base" in manifest.columns:
        base = ColumnWriter(split_path, "base", manifest.columns["base"]).records()
    missing = []
    for entry in manifest.shards:
        rec = records.get(entry.name)
        ok = rec is not None and rec.count == entry.count
        if ok and base is not None:
            ok = entry.name in base and base[entry.name].keys_sha256 == rec.keys_sha256
        if not ok:
            missing.append(entry.name)
    return missing


def activate_column(split_path: str | os.PathLike, column: str, fingerprint: str) -> Manifest:
    """Point the manifest at ``column``/``fingerprint``, refusing if any shard is missing or misaligned."""
    path = manifest_path(split_path)
    with locked(path):
        m = load_manifest(split_path)
        if not column_dir(split_path, column, fingerprint).is_dir():
            raise StoreError(f"{column_dir(split_path, column, fingerprint)}: no such column version")
        missing = missing_shards(split_path, m, column, fingerprint)
        if missing:
            raise StoreError(f"column {column!r} version {fingerprint[:12]} is incomplete: "
                             f"{len(missing)} shard(s) missing or misaligned, first {missing[0]}")
        m.columns[column] = fingerprint
        save_manifest(split_path, m)
    return m
