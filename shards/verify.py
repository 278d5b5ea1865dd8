"""Store verification: every shard of every active column against its record, the base keys and the schema.

Checks, shard by shard and column by column: the file exists with the recorded size and sha256, the tar
parses (header checksums, no truncation), each sample has exactly the column's members, the keys equal
the base column's keys in order, the count matches the manifest, and every member decodes to the
schema's dtype and shape (``pose.json`` to the structure ``shards.pose`` describes); and the split's
``vocab.json`` (loads, for the tokens column) and ``rejected.jsonl`` (as many lines as the manifest counts). The
first fault is reported with its shard, column and (where known) key. A damaged base shard is always reported
(its keys are what the other columns are aligned with); the others are then checked without the alignment.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from shards.codecs import CodecError, decode_member
from shards.errors import parse_json, read_json
from shards.layout import column_dir, column_record_path, shard_path, split_dir
from shards.manifest import Manifest, StoreError, load_manifest
from shards.pose import pose_problem
from shards.schema import (BUILD_LOCK_NAME, BUILD_REPORT_NAME, COLUMN_RECORD_NAME, COLUMNS, MANIFEST_NAME,
                           REJECTED_NAME, SOURCE_IDS_NAME, TEACHER_RECORD_NAME, VOCAB_NAME, resolve_shape)
from shards.streams import TarError, iter_samples, open_regular, read_bytes, whole_samples
from shards.writer import ShardRecord, file_sha256, read_column_record


@dataclass(frozen=True)
class Fault:
    """One problem found in the store."""

    shard: str
    column: str
    key: str | None
    message: str

    def __str__(self) -> str:
        where = (f"shard {self.shard} " if self.shard != "-" else "") + f"column {self.column!r}"
        return f"{where}{f' key {self.key}' if self.key else ''}: {self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify_split` looked at, and the faults it found (the first one first)."""

    shards: int = 0
    samples: int = 0
    columns: tuple[str, ...] = ()
    faults: list[Fault] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)  # files no tool wrote in the split or an active version folder

    @property
    def ok(self) -> bool:
        return not self.faults


def verify_split(root: str | os.PathLike, split: str, columns: Sequence[str] | None = None, *,
                 decode: bool = True, first_only: bool = True,
                 progress: Callable[[str], None] | None = None) -> VerifyReport:
    """Verify the active columns of a local split.

    Args:
        root: local store root.
        split: split name.
        columns: columns to check (default: every active column); the base keys are always read.
        decode: also decode every member and check dtype and shape against the schema.
        first_only: stop at the first fault.
        progress: called with each shard name as it is checked.

    Returns:
        The report; ``report.faults[0]`` is the first fault.

    Raises:
        StoreError: there is no manifest (not a store, or a wrong split).
    """
    path = split_dir(root, split)
    manifest = load_manifest(path)
    chosen = list(manifest.columns) if columns is None else list(columns)
    report = VerifyReport(columns=tuple(chosen))
    for name in chosen:
        if name not in manifest.columns:
            report.faults.append(Fault("-", name, None, "column is not active in the manifest"))
            return report
    records = {}
    for name in chosen:
        rec, fault = _column_records(path, manifest, name)
        if fault:
            report.faults.append(fault)
            if first_only:
                return report
        records[name] = rec
    for fault in _split_file_faults(path, manifest, chosen):
        report.faults.append(fault)
        if first_only:
            return report
    report.stray = stray_files(path, manifest)
    base_first = ["base"] + [c for c in chosen if c != "base"] if "base" in manifest.columns else chosen
    for entry in manifest.shards:
        if progress:
            progress(entry.name)
        base_keys: list[str] | None = None
        for name in base_first:
            keys, faults = _check_shard(path, manifest, name, entry.name, entry.count, records.get(name),
                                        base_keys, decode and name in chosen)
            if name == "base":  # a damaged base shard has no key list to align the others with: it is reported
                base_keys = None if faults else keys  # (chosen or not) and the others are checked on their own
            if name in chosen or (name == "base" and faults):
                report.faults += faults
                if faults and first_only:
                    return report
        report.shards += 1
        report.samples += entry.count
    return report


#: what the split folder holds besides its column folders
_SPLIT_FILES = frozenset({MANIFEST_NAME, VOCAB_NAME, REJECTED_NAME, BUILD_REPORT_NAME, TEACHER_RECORD_NAME,
                          BUILD_LOCK_NAME, SOURCE_IDS_NAME})


def stray_files(path: Path, manifest: Manifest) -> list[str]:
    """Files of the split folder and of its active version folders that no tool of this project wrote there (a
    warning, not a fault: a copy left by hand, a temporary file of a killed writer), relative to the split."""
    shards = {entry.name for entry in manifest.shards}
    expected = {f"{s}.tar" for s in shards} | {COLUMN_RECORD_NAME}
    stray = []
    for entry in sorted(os.listdir(path)):
        if entry in COLUMNS and (path / entry).is_dir():
            continue
        if entry not in _SPLIT_FILES and entry.removesuffix(".lock") not in _SPLIT_FILES:
            stray.append(entry)
    for column, fp in manifest.columns.items():
        folder = column_dir(path, column, fp)
        if not folder.is_dir():
            continue
        own = expected | ({f"{s}.rejected.json" for s in shards} if column == "base" else set()) | \
            ({VOCAB_NAME} if column == "tokens" else set())
        stray += [f"{column}/{fp[:12]}.../{e}" for e in sorted(os.listdir(folder))
                  if e.removesuffix(".lock") not in own]
    return stray


def _unbuilt_columns(path: Path, manifest: Manifest) -> list[Fault]:
    """A fault per column the split's last build (``build-report.json``) set out to make and did not: a failed
    build leaves the other columns whole, but the split is not what it asked for."""
    report_path = path / BUILD_REPORT_NAME
    if not report_path.is_file():
        return []
    try:
        report = read_json(report_path)
    except StoreError as e:
        return [Fault("-", "-", None, f"{e}")]
    asked = report.get("requested_columns") if isinstance(report, dict) else None
    if not isinstance(asked, list):  # a report of an older build says nothing of it
        return []
    return [Fault("-", c, None, f"not built: the last build ({report_path.name}, ok {json.dumps(report.get('ok'))}) "
                                "asked for it; run `pipeline build-targets` again")
            for c in asked if c in COLUMNS and c not in manifest.columns]


def _split_file_faults(path: Path, manifest: Manifest, chosen: Sequence[str]) -> list[Fault]:
    """Faults of the split's own files that the chosen columns need: ``vocab.json`` (the ids of tokens.json mean
    nothing without it) and ``rejected.jsonl`` (one line per image the manifest counts as rejected)."""
    from shards.vocab import Vocabulary

    faults = _unbuilt_columns(path, manifest)
    if "tokens" in chosen:
        vocab = path / VOCAB_NAME
        try:
            Vocabulary.load(vocab)
        except ValueError as e:
            faults.append(Fault("-", "tokens", None, f"{e} (the tokens column needs it)"))
        else:
            own = column_dir(path, "tokens", manifest.columns["tokens"]) / VOCAB_NAME
            if own.is_file() and read_bytes(str(own)) != read_bytes(str(vocab)):
                faults.append(Fault("-", "tokens", None, f"{vocab} differs from the column's own {own}"))
    if "base" in chosen:
        rejected = path / REJECTED_NAME
        try:
            lines = read_bytes(str(rejected)).decode().splitlines() if rejected.exists() else []
            ids = [parse_json(line)["id"] for line in lines]
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
            faults.append(Fault("-", "base", None, f"{rejected} is unreadable or malformed ({type(e).__name__}: {e})"))
        else:
            if len(ids) != manifest.rejected:
                what = f"holds {len(ids)} line(s)" if rejected.exists() else "is missing"
                faults.append(Fault("-", "base", None, f"{rejected} {what}; the manifest counts "
                                                       f"{manifest.rejected} rejected image(s)"))
    return faults


def _column_records(path: Path, manifest: Manifest, column: str) -> tuple[dict[str, ShardRecord], Fault | None]:
    """The shard records of the active version of ``column``, or a fault when they are missing or malformed."""
    fp = manifest.columns[column]
    folder = column_dir(path, column, fp)
    if not folder.is_dir():
        present = sorted(p.name[:12] for p in (path / column).iterdir() if p.is_dir()) if (path / column).is_dir() \
            else []
        return {}, Fault("-", column, None, f"the manifest's active version {fp[:12]} does not exist (versions "
                                            f"present: {', '.join(present) or 'none'}); rebuild the column")
    try:
        return read_column_record(column_record_path(folder), fp), None
    except StoreError as e:
        return {}, Fault("-", column, None, str(e))


def _check_shard(path: Path, manifest: Manifest, column: str, shard: str, count: int,
                 records: dict[str, ShardRecord] | None, base_keys: list[str] | None,
                 decode: bool) -> tuple[list[str], list[Fault]]:
    """Check one shard of one column; returns (its keys, faults)."""
    file = shard_path(column_dir(path, column, manifest.columns[column]), shard)
    faults: list[Fault] = []

    def fault(message: str, key: str | None = None) -> tuple[list[str], list[Fault]]:
        if changed:
            message = f"sha256 differs from column.json; {message}"
        faults.append(Fault(shard, column, key, message))
        return keys, faults

    keys: list[str] = []
    changed = False
    if not file.is_file():
        return fault(f"shard file {file} is {'not a regular file' if file.exists() else 'missing'}")
    rec = (records or {}).get(shard)
    if records is not None and rec is None:
        return fault("no record in column.json (the shard was never finished)")
    changed = records is not None and (file.stat().st_size != rec.bytes or file_sha256(file) != rec.sha256)
    col = COLUMNS[column]
    exts = set(col.exts)
    try:
        for key, members in _samples(file):
            n = len(keys)
            keys.append(key)
            if set(members) != exts:
                missing, extra = sorted(exts - set(members)), sorted(set(members) - exts)
                return fault(f"members {sorted(members)}: missing {missing}, unexpected {extra}", key)
            if base_keys is not None and (n >= len(base_keys) or base_keys[n] != key):
                expected = base_keys[n] if n < len(base_keys) else "no more samples"
                if key in base_keys[n:]:
                    return fault(f"missing key {expected} (base has it at sample {n}; this column jumps to {key})",
                                 expected)
                return fault(f"misaligned keys at sample {n}: base has {expected}, this column has {key}", key)
            if decode:
                for ext, data in members.items():
                    problem = _member_problem(col.member(ext), data, manifest.size)
                    if problem:
                        return fault(f"member {ext}: {problem}", key)
    except TarError as e:
        return fault(f"{e} (after {whole_samples(e, len(keys), exts)} whole samples)", _key_in(str(e)))
    if base_keys is not None and len(keys) < len(base_keys):
        return fault(f"missing key {base_keys[len(keys)]} (the column ends after {len(keys)} samples)",
                     base_keys[len(keys)])
    if len(keys) != count:
        return fault(f"{len(keys)} samples, the manifest says {count}")
    if changed and file.stat().st_size != rec.bytes:  # whole samples and a good end: padding was cut or added
        changed = False
        return fault(f"{file.stat().st_size} bytes, column.json says {rec.bytes}, yet every sample is whole: the "
                     "file was cut or extended after its last member")
    if changed and decode:
        return fault("yet every member parses and decodes: the bytes changed inside a member's data")
    if changed:  # members were not decoded (--no-decode), so nothing is known about their data
        return fault("every member parses, but members were not decoded; verify without --no-decode to find "
                     "the damaged member")
    if records is not None and rec.count != len(keys):
        return fault(f"{len(keys)} samples, column.json says {rec.count}")
    return keys, faults


def _key_in(message: str) -> str | None:
    """The sample key inside a TarError message naming a member (``member <key>.<ext>``), if any."""
    _, found, rest = message.partition("member ")
    return rest.split(".", 1)[0] if found else None


def _samples(file: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    with open_regular(file) as f:
        yield from iter_samples(f, check_headers=True)


def _member_problem(member, data: bytes, size: int) -> str | None:
    """Why a member's bytes are not what the schema says, or None."""
    try:
        value = decode_member(member, data, size)
    except CodecError as e:
        return f"does not decode ({e})"
    if member.ext == "pose.json":
        problem = pose_problem(value)
        return f"is not a pose record: {problem}" if problem else None
    if member.dtype is None or member.codec == "json":
        return None
    if not isinstance(value, np.ndarray):
        return f"decodes to {type(value).__name__}, not an array"
    if value.dtype != np.dtype(member.dtype):
        return f"dtype {value.dtype}, expected {member.dtype}"
    if member.shape is not None and value.shape != resolve_shape(member.shape, size):
        return f"shape {value.shape}, expected {resolve_shape(member.shape, size)}"
    return None
