"""The store's error types and the JSON reading every store file goes through (no other project imports, so
``manifest`` and ``writer`` can both use it)."""

from __future__ import annotations

import json
import os
from typing import Any


class StoreError(RuntimeError):
    """The store on disk is missing, incomplete or inconsistent; the message names the path and the fix."""


class StoreFault(StoreError):
    """A file of the store differs from what the manifest or a ``column.json`` records (a damaged store, as
    ``shards verify`` would report it); the ``shards`` command exits 1 on it, not 2."""


def read_json(path: str | os.PathLike) -> Any:
    """A local JSON file's contents; a missing or corrupt file is a StoreError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # there, but damaged
        raise StoreFault(f"{path}: corrupt JSON ({e})") from None


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages: ``[1] -> 'an array'``."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def is_json_type(value: Any, kind: type) -> bool:
    """``isinstance(value, kind)``, except that a JSON ``true`` is not an integer."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))
