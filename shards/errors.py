"""The store's error types and the JSON reading every store file goes through (importing only ``shards.streams``,
and that lazily, so ``manifest``, ``writer`` and ``streams`` can all use it)."""

from __future__ import annotations

import json
import os
from typing import Any


class StoreError(RuntimeError):
    """The store on disk is missing, incomplete or inconsistent; the message names the path and the fix."""


class StoreFault(StoreError):
    """A file of the store differs from what the manifest or a ``column.json`` records (a damaged store, as
    ``shards verify`` would report it); the ``shards`` command exits 1 on it, not 2."""


def parse_json(data: bytes | str) -> Any:
    """``json.loads`` whose every failure is a ValueError: text nested deeper than the parser's recursion limit (a
    few bytes of ``[[[[...``) included, which ``json`` raises as RecursionError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: str | os.PathLike) -> Any:
    """A local JSON file's contents; a missing file is a StoreError naming it, a corrupt one, one that is not a
    regular file (a FIFO, ``/dev/zero``) or one too large for a store's JSON a StoreFault."""
    from shards.streams import read_bytes  # streams imports this module

    try:
        return parse_json(read_bytes(os.fspath(path)))
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except OSError as e:
        raise StoreFault(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # there, but damaged (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise StoreFault(f"{path}: corrupt JSON ({e})") from None


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages: ``[1] -> 'an array'``."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def is_json_type(value: Any, kind: type) -> bool:
    """``isinstance(value, kind)``, except that a JSON ``true`` is not an integer."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))
