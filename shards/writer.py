"""Column writer: deterministic WebDataset tars written atomically, with a per-column ``column.json`` record.

A shard goes to a temporary name, is fsynced and renamed; only then does its record (count, bytes, sha256,
hash of its keys) land in ``column.json``. The same samples and fingerprint always give the same bytes:
members are sorted and every tar header field is fixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Iterable, Mapping

from shards.atomic import atomic_write_bytes, atomic_write_json, locked
from shards.codecs import encode_sample
from shards.errors import StoreFault, is_json_type, json_kind, parse_json, read_json
from shards.layout import column_dir, column_record_path, shard_path
from shards.schema import column as get_column
from shards.streams import open_regular, read_bytes


@dataclass(frozen=True)
class ShardRecord:
    """What ``column.json`` knows of one finished shard."""

    count: int
    bytes: int
    sha256: str
    keys_sha256: str  # sha256 of the keys joined by newlines: equal across aligned columns


_RECORD_FIELDS = {"count": int, "bytes": int, "sha256": str, "keys_sha256": str}


def parse_column_record(doc: Any, source: str | os.PathLike, fingerprint: str | None = None
                        ) -> dict[str, ShardRecord]:
    """The shard records of a parsed ``column.json``, by shard name.

    Args:
        doc: the parsed file.
        source: where it was read, for messages.
        fingerprint: the version it must belong to (the manifest's), if known.

    Raises:
        StoreFault: ``doc`` is not a column record (wrong shape or types), or one of another version: one line
            naming ``source``.
    """
    def bad(problem: str) -> StoreFault:
        return StoreFault(f"{source}: not a column record ({problem})")

    if not isinstance(doc, dict):
        raise bad(f"{json_kind(doc)}, not an object")
    if not isinstance(doc.get("fingerprint"), str) or not isinstance(doc.get("shards"), dict):
        raise bad("needs a string 'fingerprint' and a 'shards' object")
    records = {}
    for name, rec in doc["shards"].items():
        if not (isinstance(rec, dict) and set(rec) == set(_RECORD_FIELDS) and all(
                is_json_type(rec[k], t) for k, t in _RECORD_FIELDS.items())
                and rec["count"] >= 0 and rec["bytes"] >= 0):
            raise bad(f"shard {name}: {json.dumps(rec)[:80]} is not "
                      f"{{count, bytes, sha256, keys_sha256}}")
        records[name] = ShardRecord(**rec)
    if fingerprint is not None and doc["fingerprint"] != fingerprint:
        raise StoreFault(f"{source} is for fingerprint {doc['fingerprint']!r}, the manifest says {fingerprint!r}")
    return records


def read_column_record(location: str | os.PathLike, fingerprint: str | None = None) -> dict[str, ShardRecord]:
    """The shard records of the ``column.json`` at ``location`` (a local path, an fsspec URL or a ``pipe:``
    command, read through ``shards.streams``), as ``parse_column_record`` checks them.

    Raises:
        StoreFault: the file is missing, unreadable, not JSON, malformed, or of another version (one line).
    """
    try:
        data = read_bytes(str(location))
    except FileNotFoundError:
        raise StoreFault(f"{location}: not found") from None
    except (OSError, ValueError) as e:  # ValueError: larger than any column.json
        raise StoreFault(f"{location}: cannot read ({e})") from None
    try:
        doc = parse_json(data)
    except ValueError as e:
        raise StoreFault(f"{location}: corrupt JSON ({e})") from None
    return parse_column_record(doc, location, fingerprint)


def keys_digest(keys: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
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
    with fixed mtime, mode, uid and gid, so the same samples always give the same bytes, on any Python. They
    are the bytes recent versions of Python's ``tarfile`` write in USTAR format with these fields (a test holds
    them equal there); the headers are made here, about 10x faster than ``tarfile`` makes them.
    """
    keys: list[str] = []
    offset = 0
    for key, members in samples:
        if "." in key:
            raise ValueError(f"key {key!r} contains a dot")
        if keys and key <= keys[-1]:
            raise ValueError(f"keys must be strictly increasing: {key!r} after {keys[-1]!r}")
        keys.append(key)
        for ext in sorted(members):
            data = members[ext]
            fileobj.write(_ustar_header(f"{key}.{ext}".encode(), len(data)))
            fileobj.write(data)
            pad = -len(data) % _BLOCK
            if pad:
                fileobj.write(bytes(pad))
            offset += _BLOCK + len(data) + pad
    end = offset + 2 * _BLOCK  # two zero blocks, then zeros up to a whole record, as tarfile does
    fileobj.write(bytes(2 * _BLOCK + (-end % _RECORD)))
    return keys


_BLOCK, _RECORD = 512, 20 * 512
#: a USTAR header of a regular file with mode 0444, uid/gid 0, mtime 0, empty user/group/device/prefix fields
#: (what recent tarfile versions write; older ones wrote "0000000" device numbers): name, size, checksum vary
_USTAR_TEMPLATE = bytes(bytearray(100) + b"0000444\0" + b"0000000\0" * 2 + bytes(12) + b"00000000000\0"
                        + b" " * 8 + b"0" + bytes(100) + b"ustar\x0000" + bytes(247))


def _ustar_header(name: bytes, size: int) -> bytes:
    if len(name) > 100:
        raise ValueError(f"member name {name.decode()!r} is longer than 100 bytes")
    if size >= 8 ** 11:
        raise ValueError(f"member {name.decode()!r} is {size} bytes, over the USTAR limit of 8 GiB")
    header = bytearray(_USTAR_TEMPLATE)
    header[:len(name)] = name
    header[124:136] = b"%011o\0" % size
    header[148:155] = b"%06o\0" % sum(header)  # the checksum counts its own field as spaces
    return bytes(header)


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
        # the folder is flushed once, after the record's rename: a record that outlives its shard in a crash
        # is harmless, as a shard counts as done only when its file matches the record's sha256
        atomic_write_bytes(shard_path(self.dir, shard), data, sync_dir=False)
        record = ShardRecord(len(keys), len(data), hashlib.sha256(data).hexdigest(), keys_digest(keys))
        with locked(self.record_path):
            doc = self._load()
            doc["shards"][shard] = asdict(record)
            atomic_write_json(self.record_path, doc)
        return record

    def forget(self, shards: set[str]) -> int:
        """Drop the records of ``shards`` (their inputs changed: they are to be written again); returns how many
        there were."""
        if not self.record_path.is_file():
            return 0
        with locked(self.record_path):
            doc = self._load()
            gone = [s for s in doc["shards"] if s in shards]
            for s in gone:
                del doc["shards"][s]
            if gone:
                atomic_write_json(self.record_path, doc)
        return len(gone)

    def records(self) -> dict[str, ShardRecord]:
        """Every finished shard of this version, by shard name."""
        return parse_column_record(self._load(), self.record_path)

    def is_done(self, shard: str, check_sha256: bool = True) -> bool:
        """True when the shard has a record, its file exists, and (optionally) its sha256 matches."""
        return shard in self.done_shards([shard], check_sha256)

    def done_shards(self, shards: Iterable[str], check_sha256: bool = True, threads: int = 1) -> set[str]:
        """The shards among ``shards`` that ``is_done``, from one read of ``column.json``; with ``threads`` > 1
        the files are hashed on that many threads (sha256 runs outside the GIL: a resumed train2017 store is
        tens of GB to check)."""
        records = self.records()

        def done(shard: str) -> bool:
            rec = records.get(shard)
            path = shard_path(self.dir, shard)
            if rec is None or not path.is_file() or path.stat().st_size != rec.bytes:
                return False
            return not check_sha256 or file_sha256(path) == rec.sha256

        shards = list(shards)
        if threads <= 1 or not check_sha256 or len(shards) <= 1:
            return {sh for sh in shards if done(sh)}
        with ThreadPoolExecutor(min(threads, len(shards))) as pool:
            return {sh for sh, ok in zip(shards, pool.map(done, shards)) if ok}

    def _load(self) -> dict[str, Any]:
        doc = read_json(self.record_path) if self.record_path.exists() else None
        if doc is None:
            doc = {"column": self.column.name, "fingerprint": self.fingerprint, "spec": self.spec, "shards": {}}
        else:
            parse_column_record(doc, self.record_path)  # a malformed record is a StoreFault, not a TypeError
            if doc["fingerprint"] != self.fingerprint:
                raise ValueError(f"{self.record_path} belongs to fingerprint {doc['fingerprint']!r}, "
                                 f"not {self.fingerprint!r}")
        return doc
