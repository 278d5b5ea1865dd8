"""Column writer: deterministic WebDataset tars written atomically, with a per-column ``column.json`` record.

A shard goes to a temporary name, is fsynced and renamed; only then does its record (count, bytes, sha256,
hash of its keys) land in ``column.json``. The same samples and fingerprint always give the same bytes:
members are sorted and every tar header field is fixed.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Iterable, Mapping

from shards.atomic import atomic_write_bytes, atomic_write_json, locked
from shards.codecs import encode_sample
from shards.layout import column_dir, column_record_path, shard_path
from shards.schema import column as get_column


@dataclass(frozen=True)
class ShardRecord:
    """What ``column.json`` knows of one finished shard."""

    count: int
    bytes: int
    sha256: str
    keys_sha256: str  # sha256 of the keys joined by newlines: equal across aligned columns


def keys_digest(keys: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tar_bytes(samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> tuple[bytes, list[str]]:
    """Build a deterministic tar of already-encoded samples; returns (tar bytes, keys in order).

    Keys must be strictly increasing; members of a key are written in sorted order.
    """
    buf = io.BytesIO()
    keys = write_tar(buf, samples)
    return buf.getvalue(), keys


def write_tar(fileobj: BinaryIO, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> list[str]:
    """Stream a deterministic tar of already-encoded samples into ``fileobj``; returns the keys in order.

    Keys must be strictly increasing and contain no dot; members of a key are written in sorted order
    with fixed mtime, mode, uid and gid, so the same samples always give the same bytes.
    """
    keys: list[str] = []
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            if "." in key:
                raise ValueError(f"key {key!r} contains a dot")
            if keys and key <= keys[-1]:
                raise ValueError(f"keys must be strictly increasing: {key!r} after {keys[-1]!r}")
            keys.append(key)
            for ext in sorted(members):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return keys


class ColumnWriter:
    """Writes the shards of one version (fingerprint) of one column of a split.

    Args:
        split_path: the split folder, e.g. ``shards/train2017``.
        column: column name from ``shards.schema.COLUMNS``.
        fingerprint: the stage fingerprint; names the version folder.
        spec: what produced the column (stage, teacher, parameters); saved in ``column.json``.
    """

    def __init__(self, split_path: str | os.PathLike, column: str, fingerprint: str,
                 spec: Mapping[str, Any] | None = None) -> None:
        self.column = get_column(column)
        self.fingerprint = fingerprint
        self.spec = dict(spec or {})
        self.dir = column_dir(split_path, column, fingerprint)
        self.record_path = column_record_path(self.dir)

    def write_shard(self, shard: str, samples: Iterable[tuple[str, Mapping[str, Any]]]) -> ShardRecord:
        """Encode and write one shard atomically, then record it; returns the record."""
        encoded = ((key, encode_sample(self.column, dict(values))) for key, values in samples)
        return self.write_encoded_shard(shard, encoded)

    def write_encoded_shard(self, shard: str, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> ShardRecord:
        """Write a shard whose members are already encoded bytes."""
        data, keys = tar_bytes(samples)
        atomic_write_bytes(shard_path(self.dir, shard), data)
        record = ShardRecord(len(keys), len(data), hashlib.sha256(data).hexdigest(), keys_digest(keys))
        with locked(self.record_path):
            doc = self._load()
            doc["shards"][shard] = asdict(record)
            atomic_write_json(self.record_path, doc)
        return record

    def records(self) -> dict[str, ShardRecord]:
        """Every finished shard of this version, by shard name."""
        return {name: ShardRecord(**rec) for name, rec in self._load()["shards"].items()}

    def is_done(self, shard: str, check_sha256: bool = True) -> bool:
        """True when the shard has a record, its file exists, and (optionally) its sha256 matches."""
        rec = self.records().get(shard)
        path = shard_path(self.dir, shard)
        if rec is None or not path.is_file() or path.stat().st_size != rec.bytes:
            return False
        return not check_sha256 or file_sha256(path) == rec.sha256

    def _load(self) -> dict[str, Any]:
        from shards.manifest import read_json  # local import: manifest imports this module

        doc = read_json(self.record_path) if self.record_path.exists() else None
        if doc is None:
            doc = {"column": self.column.name, "fingerprint": self.fingerprint, "spec": self.spec, "shards": {}}
        elif doc.get("fingerprint") != self.fingerprint:
            raise ValueError(f"{self.record_path} belongs to fingerprint {doc.get('fingerprint')!r}, "
                             f"not {self.fingerprint!r}")
        return doc
