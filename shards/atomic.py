"""Crash-safe file primitives: atomic replace with fsync, an inter-process lock around read-modify-write, and a
lock that refuses a second holder at once and names the first (``held``)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform dependent
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


FILE_MODE = 0o644  # mkstemp makes 0600 files; store files must be readable by other users and services


def temp_file_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, str]:
    """``mkstemp`` in ``path``'s folder, with the store's file mode instead of 0600; returns (fd, name)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, sync_dir: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; on success fsync it and rename it over ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. ``sync_dir=False`` leaves
    the rename's own flush (an fsync of the folder) to a later write in the same folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync_dir: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    with atomic_file(path, sync_dir) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write pretty, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` (serialises writers of one record file across processes)."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class Held(RuntimeError):
    """Another process holds the lock file ``path``; ``holder`` is what it wrote there about itself ({} if
    unreadable)."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        super().__init__(f"{path} is held by another process")
        self.path, self.holder = path, holder


#: the most of a lock file read back to name its holder
_HOLDER_BYTES = 4096


@contextlib.contextmanager
def held(path: str | os.PathLike, holder: dict[str, Any]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` for the ``with`` block, or raise ``Held`` at once.

    The holder's description (JSON, ``holder``) is written into the file while it is held, for the message of the
    one refused; the lock itself is the flock, which the kernel releases however the holder ends (kill -9
    included), so a stale file never blocks. The file is opened as a regular file only, never through a symlink.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                found = json.loads(os.pread(fd, _HOLDER_BYTES, 0).decode())
            except (ValueError, UnicodeDecodeError):  # being written, or not ours
                found = {}
            raise Held(path, found if isinstance(found, dict) else {}) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder, sort_keys=True).encode()[:_HOLDER_BYTES], 0)
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def out_folder_problem(out: str | os.PathLike, writable: bool = True) -> str | None:
    """Why a folder ``out`` could not be created or written: a file at ``out`` or on the way to it, or (with
    ``writable``) the nearest existing folder on the way not writable; None when it could. Nothing is created."""
    out = Path(out)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"{out} is a file, not a folder" if existing == out else f"{out}: {existing} is a file, not a folder"
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        return f"{out}: {existing} is not writable" if existing != out else f"{out} is not writable"
    return None
