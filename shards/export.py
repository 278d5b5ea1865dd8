"""Export of a split's active columns as one plain WebDataset: one tar per shard holding every member of a sample.

The result is what third-party tools expect (``webdataset.WebDataset("out/train2017-{000000..000117}.tar")``);
tars are deterministic and written atomically, and ``export.json`` records the source versions.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from shards.atomic import atomic_file, atomic_write_json, fsync_dir
from shards.reader import StoreReader
from shards.writer import write_tar

EXPORT_RECORD_NAME = "export.json"


@dataclass(frozen=True)
class ExportResult:
    """The tars written, in shard order, and the number of samples in them."""

    paths: tuple[Path, ...]
    samples: int


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
    """
    reader = StoreReader(root, split, columns, decode=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, records, total = [], [], 0
    for shard in reader.manifest.shard_names:
        final = out / f"{shard}.tar"
        with atomic_file(final) as f:
            keys = write_tar(f, ((s.pop("__key__"), {k: v for k, v in s.items() if k != "__shard__"})
                                 for s in reader.read_shard(shard)))
        digest = hashlib.sha256(final.read_bytes()).hexdigest()
        records.append({"name": shard, "count": len(keys), "sha256": digest})
        paths.append(final)
        total += len(keys)
        if progress:
            progress(shard)
    fsync_dir(out)
    atomic_write_json(out / EXPORT_RECORD_NAME, {
        "split": split, "columns": {c: reader.manifest.columns[c] for c in reader.columns},
        "num_samples": total, "shards": records})
    return ExportResult(tuple(paths), total)
