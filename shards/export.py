"""Export of a split's active columns as one plain WebDataset: one tar per shard holding every member of a sample.

The result is what third-party tools expect (``webdataset.WebDataset("out/" + export["urls"])``, ``urls`` being
the brace range of the tars written, e.g. ``train2017-{000000..000118}.tar``); tars are deterministic,
``export.json`` records the source versions and that range, and ``vocab.json`` comes along with the
tokens column. Every source shard is checked against its ``column.json`` record while it is packed (read once,
hashed on the way), and the tars appear under their names only once all of them are written, so a damaged
store never yields an export, nor a half-written one.

``--out`` is the user's folder: an export writes only its own names there (``<shard>.tar`` for the split's
shards, ``vocab.json``, ``export.json`` and their temporary files, created beside them and renamed over them, so
a name that is a symlink is replaced as a link and nothing is written through it), and removes only those and
the tars the folder's earlier ``export.json`` lists. A non-empty folder that is not an earlier export of the
same split is refused unless ``overwrite``; an ``--out`` that is itself a symlink is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from shards.atomic import atomic_write_bytes, atomic_write_json, fsync_dir, out_folder_problem, temp_file_beside
from shards.errors import parse_json
from shards.manifest import StoreError, StoreFault, is_plain_name
from shards.reader import StoreReader, check_read
from shards.schema import MANIFEST_NAME, VOCAB_NAME
from shards.streams import HashingReader, is_url, join, open_regular, read_bytes
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
    """``--out`` cannot take an export (a symlink, a file, a folder inside the store, or, without ``overwrite``, a
    folder holding other files than an earlier export of the split)."""


@dataclass(frozen=True)
class _EarlierExport:
    """What a folder's ``export.json`` says of the export it holds: its split and the tars it lists."""

    split: str
    tars: frozenset[str]


_RECORD_LIMIT = 64 * 2**20  # bytes of an export.json read at most (one of 100,000 shards is about 15 MiB)


def _earlier_export(out: Path) -> _EarlierExport | None:
    """The export recorded by ``out/export.json``; None when there is no such file, or it is not a regular file
    (a symlink is not followed, a FIFO not waited on) or not a record (an object whose ``split`` is a plain
    name). The tars it lists are kept only where they are plain shard names, so none of them leaves ``out``."""
    try:
        with open_regular(out / EXPORT_RECORD_NAME, follow_symlinks=False) as f:
            data = f.read(_RECORD_LIMIT + 1)
        if len(data) > _RECORD_LIMIT:
            return None
        doc = parse_json(data)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not is_plain_name(doc.get("split")):
        return None
    shards = doc.get("shards")
    names = [s.get("name") for s in shards if isinstance(s, dict)] if isinstance(shards, list) else []
    return _EarlierExport(doc["split"], frozenset(f"{n}.tar" for n in names if is_plain_name(n)))


#: the names ``temp_file_beside`` (mkstemp) gives: ``.<final name>.<8 random characters>.tmp``
_TEMP_NAME = re.compile(r"\.(?P<final>.+)\.[a-z0-9_]{8}\.tmp")


def _is_temp_of(name: str, finals: set[str]) -> bool:
    """True for the temporary file of one of ``finals`` (left by an export that was killed)."""
    m = _TEMP_NAME.fullmatch(name)
    return m is not None and m.group("final") in finals


def _plan_out(out: Path, split: str, shard_names: Sequence[str], earlier: _EarlierExport | None,
              overwrite: bool) -> tuple[list[str], list[str]]:
    """Check that an export of ``split`` may write into ``out``; returns (the earlier export's tars that this
    one does not rewrite, leftover temporary files of an export), the only other files it will remove.

    Raises:
        ExportTargetError: ``out`` holds other files and is not an earlier export of ``split`` (without
            ``overwrite``), or one of the names an export writes is a folder there.
    """
    try:
        entries = set(os.listdir(out))
    except FileNotFoundError:
        return [], []
    except OSError as e:
        raise ExportTargetError(f"--out {out} cannot be listed ({e.strerror})") from None
    tars = {f"{s}.tar" for s in shard_names}
    ours = earlier is not None and earlier.split == split
    listed = earlier.tars if earlier is not None and (ours or overwrite) else frozenset()
    stale = sorted((listed - tars) & entries)
    finals = tars | listed | {VOCAB_NAME, EXPORT_RECORD_NAME}
    leftovers = sorted(e for e in entries if _is_temp_of(e, finals))
    if not overwrite and not ours and entries - set(leftovers):
        raise ExportTargetError(f"--out {out} is not empty and holds no export of split {split!r} (no "
                                f"{EXPORT_RECORD_NAME} of it); export to an empty or new folder, or pass --overwrite "
                                "to replace only the files an export writes there")
    for name in sorted(finals & entries):
        if stat.S_ISDIR(os.lstat(out / name).st_mode):
            raise ExportTargetError(f"--out {out}: {name} is a folder, where the export writes a file; move it away")
    return stale, leftovers


def brace_range(shards: Sequence[str]) -> str:
    """The tars of ``shards`` as one brace pattern (``train2017-{000000..000118}.tar``) when they are consecutive
    ``<split>-NNNNNN`` names, else as a brace list; what webdataset and ``ray.data`` expand."""
    stems = [s.rsplit("-", 1) for s in shards]
    if stems and all(len(p) == 2 and p[1].isdigit() for p in stems) and len({p[0] for p in stems}) == 1:
        numbers = [int(p[1]) for p in stems]
        width = len(stems[0][1])
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))) and all(len(p[1]) == width for p in stems):
            if len(numbers) == 1:
                return f"{shards[0]}.tar"
            return f"{stems[0][0]}-{{{stems[0][1]}..{stems[-1][1]}}}.tar"
    return shards[0] + ".tar" if len(shards) == 1 else "{" + ",".join(shards) + "}.tar"


def _vocabulary(reader: StoreReader) -> bytes:
    """The split's ``vocab.json``, which an export of the tokens column carries; a missing one is a StoreFault."""
    location = join(reader.root, reader.split, VOCAB_NAME)
    try:
        return read_bytes(location)
    except OSError as e:
        raise StoreFault(f"column 'tokens': cannot read {location} ({e}), which its ids index; "
                         "run `shards verify`") from None


def _check_out(root: str | os.PathLike, out: Path) -> None:
    """Raise ExportTargetError for an ``out`` that is a symlink, a file or cannot be written, or a folder of a
    local store's split (its tars would land among the store's own, or replace them)."""
    if out.is_symlink():  # the export would land wherever the link points (a dangling one: mkdir fails)
        raise ExportTargetError(f"--out {out} is a symbolic link (to {os.readlink(out)!r}); an export writes nothing "
                                "through a link: give the folder itself, or a new folder")
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
                      progress: Callable[[str], None] | None = None, overwrite: bool = False) -> ExportResult:
    """Pack the chosen (default: all active) columns of a split into ``out_dir/<split>-NNNNNN.tar``.

    Args:
        root: store root (a local path or any URL the reader takes).
        split: split name.
        out_dir: output folder (created): missing, empty, or an earlier export of ``split`` (its ``export.json``
            says so; the export there is replaced, the tars it lists that this one does not write removed, any
            other file kept).
        columns: columns to pack; default every active column.
        progress: called with each shard name once written.
        overwrite: take a non-empty ``out_dir`` that is not an earlier export of ``split`` too (another split's
            export, other files): still only the names an export writes are replaced or removed there, and the
            tars its ``export.json`` lists; every other file stays.

    Returns:
        The paths written and the sample count.

    Raises:
        StoreFault: a source shard differs from its ``column.json`` record (size or sha256), or has none.
        StoreError: the store cannot be read otherwise. On any error no new tar or ``export.json`` is left in
            ``out_dir``; a previous export there keeps its tars.
        ExportTargetError: ``out_dir`` is a symlink, a file, the store root or inside one of its splits; or,
            without ``overwrite``, a non-empty folder that is not an earlier export of ``split``. Nothing is
            written or removed then.
    """
    out = Path(out_dir)
    _check_out(root, out)
    earlier = _earlier_export(out)  # one folder holds one split's export: its export.json and vocab.json say which
    if earlier is not None and earlier.split != split and not overwrite:
        raise ExportTargetError(f"--out {out} holds the export of split {earlier.split!r}; export {split!r} to a "
                                "folder of its own (or pass --overwrite to replace that export)")
    reader = StoreReader(root, split, columns, decode=False, check=True)
    records = reader.records  # every column.json, read once by the reader (check=True)
    vocab = _vocabulary(reader) if "tokens" in reader.columns else None
    stale, leftovers = _plan_out(out, split, reader.manifest.shard_names, earlier, overwrite)
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
            os.replace(tmp, final)  # a symlink there is replaced, never written through
        for name in stale + leftovers:  # the earlier export's tars this one lacks, a killed export's temporaries
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
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
    else:  # an earlier export's, whose tokens are gone (a symlink: the link goes, not what it points to)
        with contextlib.suppress(FileNotFoundError):
            (out / VOCAB_NAME).unlink()
    fsync_dir(out)
    atomic_write_json(out / EXPORT_RECORD_NAME, {
        "split": split, "columns": {c: reader.manifest.columns[c] for c in reader.columns},
        "num_samples": total, "shards": shards, "urls": brace_range(reader.manifest.shard_names)})
    return ExportResult(tuple(final for _, final in written), total)
