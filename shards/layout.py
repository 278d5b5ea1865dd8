"""Paths of the store on disk: ``<root>/<split>/<column>/<fingerprint>/<split>-NNNNNN.tar`` (DESIGN 3).

Every column, the base one included, lives under a fingerprint folder so that all columns are versioned
the same way; the manifest's ``columns`` map says which folder is active.
"""

from __future__ import annotations

import os
from pathlib import Path

from shards.schema import COLUMN_RECORD_NAME, MANIFEST_NAME


def split_dir(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / split


def column_dir(split_path: str | os.PathLike, column: str, fingerprint: str) -> Path:
    return Path(split_path) / column / fingerprint


def shard_path(col_dir: str | os.PathLike, shard: str) -> Path:
    return Path(col_dir) / f"{shard}.tar"


def column_record_path(col_dir: str | os.PathLike) -> Path:
    return Path(col_dir) / COLUMN_RECORD_NAME


def manifest_path(split_path: str | os.PathLike) -> Path:
    return Path(split_path) / MANIFEST_NAME
