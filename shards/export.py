"""Export of a split's active columns as one plain WebDataset: one tar per shard holding every member of a sample.

The result is what third-party tools expect (``webdataset.WebDataset("out/train2017-{000000..000117}.tar")``);
tars are deterministic, ``export.json`` records the source versions, and ``vocab.json`` comes along with the
tokens column. Every source shard is checked against its ``column.json`` record while it is packed (read once,
hashed on the way), and the tars appear under their names only once all of them are written, so a damaged
store never yields an export, nor a half-written one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from shards.atomic import atomic_write_bytes, atomic_write_json, fsync_dir, out_folder_problem, temp_file_beside
from shards.manifest import StoreError, StoreFault
from shards.reader import StoreReader, check_read
from shards.schema import MANIFEST_NAME, VOCAB_NAME
from shards.streams import HashingReader, is_url, join, read_bytes
from shards.writer import ShardRecord, write_tar

EXPORT_RECORD_NAME = "export.json"


@dataclass(frozen=True)
class ExportResult:
    """The tars written, in shard order, and the number of samples in them."""

    paths: tuple[Path, ...]
    samples: int


class _HashingWriter:
    """A binary file wrapper that keeps the sha256 and size of what is written through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.f.write(data)


def _pack_shard(reader: StoreReader, records: dict[str, dict[str, ShardRecord]], shard: str,
                sink: BinaryIO) -> list[str]:
    """Write the joined samples of ``shard`` as one tar to ``sink``, checking every source tar against its
    ``column.json`` record on the way (each is read once); returns the keys.

    Raises:
        StoreFault: a source tar has no record, cannot be read, or differs from its record (also when that
            difference is what made it unreadable as a tar).
    """
    where = {c: f"shard {shard} column {c!r}" for c in reader.columns}
    for c in reader.columns:
        if shard not in records[c]:
            raise StoreFault(f"{where[c]}: no record in column.json (the shard was never finished); "
                             "run `shards verify`")
    streams: dict[str, HashingReader] = {}

    def opener(location: str) -> HashingReader:
        streams[location] = HashingReader(location)
        return streams[location]

    try:
        keys = write_tar(sink, ((s.pop("__key__"), {k: v for k, v in s.items() if k != "__shard__"})
                                for s in reader.read_shard(shard, opener)))
    except StoreError as e:  # unreadable: a damaged file says so as a fault, whatever the parser tripped on
        for c in reader.columns:
            location = reader.shard_location(c, shard)
            if location not in streams:  # the tar that failed to open (they open in column order)
                raise StoreFault(f"{e}; run `shards verify`") from None
            stream = streams[location]
            stream.close()
            if not stream.complete and stream.error is None:  # left part-read (the reader was abandoned): again
                try:
                    stream = HashingReader(location)
                except OSError as oe:
                    raise StoreFault(f"{where[c]}: cannot read {location} ({oe}); run `shards verify`") from None
                stream.close()
            check_read(where[c], records[c][shard], stream, "nothing exported")
        raise
    for c in reader.columns:
        check_read(where[c], records[c][shard], streams[reader.shard_location(c, shard)], "nothing exported")
    return keys


class ExportTargetError(ValueError):
    """``--out`` cannot take an export (a file, or a folder inside the store)."""


def _vocabulary(reader: StoreReader) -> bytes:
    """The split's ``vocab.json``, which an export of the tokens column carries; a missing one is a StoreFault."""
    location = join(reader.root, reader.split, VOCAB_NAME)
    try:
        return read_bytes(location)
    except OSError as e:
        raise StoreFault(f"column 'tokens': cannot read {location} ({e}), which its ids index; "
                         "run `shards verify`") from None


def _check_out(root: str | os.PathLike, out: Path) -> None:
    """Raise ExportTargetError for an ``out`` that is a file or cannot be written, or a folder of a local store's
    split (its tars would land among the store's own, or replace them)."""
    problem = out_folder_problem(out)
    if problem:
        raise ExportTargetError(f"--out {problem}")
    if is_url(root):
        return
    store, target = Path(root).resolve(), out.resolve()
    if target == store or (target.is_relative_to(store)
                           and (store / target.relative_to(store).parts[0] / MANIFEST_NAME).is_file()):
        raise ExportTargetError(f"--out {out} is inside the store {root}; export to a folder outside it")


def export_webdataset(root: str | os.PathLike, split: str, out_dir: str | os.PathLike,
                      columns: Sequence[str] | None = None,
                      progress: Callable[[str], None] | None = None) -> ExportResult:
    """Pack the chosen (default: all active) columns of a split into ``out_dir/<split>-NNNNNN.tar``.

    Args:
        root: store root (a local path or any URL the reader takes).
        split: split name.
        out_dir: output folder (created).
        columns: columns to pack; default every active column.
        progress: called with each shard name once written.

    Returns:
        The paths written and the sample count.

    Raises:
        StoreFault: a source shard differs from its ``column.json`` record (size or sha256), or has none.
        StoreError: the store cannot be read otherwise. On any error no new tar or ``export.json`` is left in
            ``out_dir``; a previous export there keeps its tars.
        ExportTargetError: ``out_dir`` is a file, the store root or inside one of its splits.
    """
    out = Path(out_dir)
    _check_out(root, out)
    try:  # one folder holds one split's export: its export.json and vocab.json describe that split
        other = json.loads((out / EXPORT_RECORD_NAME).read_text()).get("split")
    except (OSError, ValueError, AttributeError):
        other = None
    if other is not None and other != split:
        raise ExportTargetError(f"--out {out} holds the export of split {other!r}; export {split!r} to a folder of "
                                "its own")
    reader = StoreReader(root, split, columns, decode=False, check=True)
    records = reader.records  # every column.json, read once by the reader (check=True)
    vocab = _vocabulary(reader) if "tokens" in reader.columns else None
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path]] = []  # (temporary name, final name): renamed only when every tar is written
    shards, total = [], 0
    try:
        for shard in reader.manifest.shard_names:
            final = out / f"{shard}.tar"
            fd, tmp = temp_file_beside(final)
            written.append((tmp, final))
            with os.fdopen(fd, "wb") as f:
                sink = _HashingWriter(f)
                keys = _pack_shard(reader, records, shard, sink)
                f.flush()
                os.fsync(f.fileno())
            shards.append({"name": shard, "count": len(keys), "sha256": sink.sha256.hexdigest()})
            total += len(keys)
            if progress:
                progress(shard)
        with contextlib.suppress(FileNotFoundError):  # no export.json until every tar is in place
            (out / EXPORT_RECORD_NAME).unlink()
        for tmp, final in written:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if created:
            with contextlib.suppress(OSError):  # only if still empty
                out.rmdir()
        raise
    if vocab is not None:  # the ids of tokens.json index it
        atomic_write_bytes(out / VOCAB_NAME, vocab)
    else:  # an earlier export's, whose tokens are gone
        with contextlib.suppress(FileNotFoundError):
            (out / VOCAB_NAME).unlink()
    fsync_dir(out)
    atomic_write_json(out / EXPORT_RECORD_NAME, {
        "split": split, "columns": {c: reader.manifest.columns[c] for c in reader.columns},
        "num_samples": total, "shards": shards})
    return ExportResult(tuple(final for _, final in written), total)
