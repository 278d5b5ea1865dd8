"""The per-split ``manifest.json``: shard list, sample counts and the ACTIVE fingerprint of every column.

A column's pointer moves atomically (lock, rewrite to a temporary file, rename) and only once every shard
of the manifest has a record in that column version with the same keys as the base column.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards.atomic import atomic_write_json, locked
from shards.errors import StoreError, StoreFault, is_json_type, json_kind, read_json
from shards.layout import column_dir, manifest_path
from shards.schema import (COLUMNS, DEFAULT_SHARD_SIZE, DEFAULT_STORE_SIZE, MANIFEST_NAME, MAX_STORE_SIZE,
                           STORE_FORMAT)
from shards.writer import ColumnWriter

# StoreError, StoreFault and read_json are defined in shards.errors (the writer needs them too) and offered here,
# where the store's readers have always imported them from.
__all__ = ["Manifest", "ShardEntry", "StoreError", "StoreFault", "activate_column", "is_plain_name", "load_manifest",
           "missing_shards", "read_json", "save_manifest", "update_manifest"]


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
    def from_json(cls, d: Any, source: str | os.PathLike = MANIFEST_NAME) -> "Manifest":
        """Build a manifest from its parsed JSON, checking its shape first.

        Raises:
            StoreError: ``d`` is of another store format; StoreFault: not a manifest (a missing key, a wrong type):
                one line naming ``source``, instead of a TypeError deep in a command.
        """
        if isinstance(d, dict) and isinstance(d.get("format"), str) and d["format"] != STORE_FORMAT:
            raise StoreError(f"{source}: store format {d['format']!r} is not {STORE_FORMAT!r} (format 2 keeps the "
                             "keypoints in a pose column of their own); build the split again with `pipeline "
                             "build-targets` (then `shards gc` removes the old columns)")
        problem = _manifest_problem(d)
        if problem:
            raise StoreFault(f"{source}: not a store manifest ({problem})")
        d = dict(d)
        d.pop("num_samples", None)
        d["shards"] = [ShardEntry(s["name"], s["count"]) for s in d["shards"]]
        d["columns"] = dict(d["columns"])
        return cls(**d)


_REQUIRED = {"split": str, "size": int, "shard_size": int, "shards": list, "columns": dict, "format": str}
_OPTIONAL = {"rejected": int, "config": dict, "num_samples": int}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


#: what a shard, column or fingerprint name read from a store may be: such names become path components and,
#: for a ``pipe:`` root, part of a shell command, so nothing beyond letters, digits, "-" and "_"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")


def is_plain_name(name: Any) -> bool:
    """True for a string usable as one path component (a shard, column or fingerprint name): 1 to 128 letters,
    digits, "-" and "_", not starting with "-"."""
    return isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None


def _manifest_problem(d: Any) -> str | None:
    """What makes ``d`` not the JSON of a :class:`Manifest`, or None."""
    if not isinstance(d, dict):
        return f"{json_kind(d)}, not an object"
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        return f"missing {', '.join(missing)}"
    unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        return f"unknown key(s) {', '.join(map(repr, unknown))}"
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in d and not is_json_type(d[key], kind):
            return f"{key} is {json.dumps(d[key])[:40]}, not {_TYPE_NAMES[kind]}"
    for key, least in (("size", 1), ("shard_size", 1), ("rejected", 0)):
        if d.get(key, least) < least:
            return f"{key} is {d[key]}, below {least}"
    if d["size"] > MAX_STORE_SIZE:  # S bounds what decoding a member may allocate
        return f"size is {d['size']}, above the largest store size {MAX_STORE_SIZE}"
    names = set()
    for i, s in enumerate(d["shards"]):
        if not (isinstance(s, dict) and set(s) == {"name", "count"} and is_plain_name(s["name"])
                and is_json_type(s["count"], int) and s["count"] >= 0):
            return f"shards[{i}] is {json.dumps(s)[:60]}, not {{\"name\": <shard name>, \"count\": <samples>}}"
        if s["name"] in names:
            return f"shard {s['name']} is listed twice"
        names.add(s["name"])
    for column, fp in d["columns"].items():
        if column not in COLUMNS:
            return f"unknown column {column!r} in columns (columns are: {', '.join(COLUMNS)})"
        if not is_plain_name(fp):
            return f"columns[{column!r}] is {json.dumps(fp)[:40]}, not a fingerprint"
    return None


def load_manifest(split_path: str | os.PathLike) -> Manifest:
    """Read a split's manifest; a missing, corrupt or malformed one is a StoreError naming the path."""
    path = manifest_path(split_path)
    if not path.exists():
        raise StoreError(f"{path}: no manifest; is {Path(split_path).parent} a store and "
                         f"{Path(split_path).name!r} a split built into it?")
    return Manifest.from_json(read_json(path), path)


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
