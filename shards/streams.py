"""Byte streams of a store wherever it lives (local path, fsspec URL, ``pipe:`` command) and a fast tar parser.

The parser reads a tar as a stream of 512-byte blocks, checks every header's checksum and refuses a
truncated archive, so a reader or a verifier sees a damaged shard as an error, never as fewer samples.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import stat
import subprocess
from typing import BinaryIO, Iterator

from shards.schema import KEY_DIGITS

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_READ_BUFFER = 1 << 20
#: the largest tar member a store holds (a PNG of an RGB 4096x4096 map stored is about 50 MB); a header declaring
#: more is a damaged or hostile shard, refused before anything that size is read into memory
MAX_MEMBER_BYTES = 256 << 20
MAX_NAME_BYTES = 1 << 16  # a GNU long-name or pax header record
#: the most :func:`read_bytes` reads: a manifest, a ``column.json`` or a ``vocab.json`` (a 2048-word vocabulary is
#: about 6 MB); a file beyond it (``/dev/zero`` given as a manifest) is refused, not read until memory runs out
MAX_SMALL_FILE_BYTES = 128 << 20


class FileTooLarge(ValueError):
    """A store file meant to be small (a manifest, a record) holds more than :data:`MAX_SMALL_FILE_BYTES`."""


class TarError(ValueError):
    """A tar stream is damaged (bad header checksum, truncated member or missing end-of-archive)."""


def is_url(root: str | os.PathLike) -> bool:
    """True when ``root`` is a ``pipe:`` command or an fsspec URL rather than a local path."""
    s = str(root)
    return s.startswith("pipe:") or ("://" in s and not s.startswith("file://"))


def join(root: str | os.PathLike, *parts: str) -> str:
    """Location of ``parts`` below ``root`` (a path, a URL, or a ``pipe:`` command template).

    Always join from the root: a ``pipe:`` template's ``{}`` is replaced by the relative path, shell-quoted.
    """
    rel = "/".join(parts)
    s = str(root)
    if s.startswith("pipe:") and "{}" in s:  # the path is quoted for the shell (adjacent words concatenate)
        return s.replace("{}", shlex.quote(rel))
    if s.startswith("pipe:"):
        rel = shlex.quote(rel)
    elif s.startswith("file://"):
        s = s[len("file://"):]
    return s.rstrip("/") + "/" + rel if s else rel


def open_stream(location: str) -> BinaryIO:
    """Open a location from :func:`join` for sequential binary reading.

    ``pipe:CMD`` runs CMD in a shell and reads its stdout; a ``{}`` in CMD is where the path below the
    store root goes (``pipe:curl -s https://host/store/{}``), otherwise the path is appended after a ``/``.
    Other URLs go through fsspec; anything else is a local file, which must be a regular file: a FIFO or a
    device (``/dev/zero``) is an OSError, never read (and opening never waits for a FIFO's writer).
    """
    if location.startswith("pipe:"):
        return _PipeStream(location[len("pipe:"):])
    if "://" in location:
        import fsspec  # only for remote stores

        try:
            return fsspec.open(location, "rb").open()
        except ImportError as e:  # the protocol's own packages (aiohttp for http, s3fs, gcsfs) are not installed
            scheme = location.split("://", 1)[0]
            raise OSError(f"{scheme}:// stores need fsspec's {scheme} support ({e}); for http(s): "
                          "pip install 'fsspec[http]'") from None
    return open_regular(location)


def open_regular(path: str | os.PathLike, buffering: int = _READ_BUFFER, follow_symlinks: bool = True) -> BinaryIO:
    """Open a local file for binary reading if it is a regular file (through symlinks unless ``follow_symlinks`` is
    False: then a symlink is an OSError); a FIFO, socket or device raises OSError naming it. O_NONBLOCK keeps
    ``open`` from waiting for a FIFO's writer."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{path} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(location: str, limit: int = MAX_SMALL_FILE_BYTES) -> bytes:
    """Read a whole small file, e.g. a manifest; a missing one raises FileNotFoundError, one holding more than
    ``limit`` bytes FileTooLarge (after reading ``limit + 1`` bytes, whatever the file claims)."""
    with open_stream(location) as f:
        data = _read_rest(f.read, f.read(limit + 1), limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"{location} holds more than {limit} bytes; not a store file")
    return data


class _PipeStream(io.RawIOBase):
    """stdout of a shell command; a non-zero exit is an OSError naming the command, raised by the read that meets
    the end of its output."""

    def __init__(self, template: str) -> None:
        super().__init__()
        self.cmd = template
        self._proc = subprocess.Popen(self.cmd, shell=True, stdout=subprocess.PIPE, bufsize=_READ_BUFFER)
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # a zero-length tar member: not the end of the output
            return b""
        data = self._proc.stdout.read() if n is None or n < 0 else self._proc.stdout.read(n)
        if not data and not self._eof:  # the end: a failed command (curl -f on an HTTP error) is said here, where
            self._eof = True  # the reader turns it into a fault of the shard, rather than when the stream closes
            rc = self._proc.wait()
            if rc != 0:
                raise FileNotFoundError(f"pipe:{self.cmd} exited with status {rc}")
        return data

    def readinto(self, b) -> int:  # pragma: no cover - read() is what the parser uses
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        if not self._eof:
            self._proc.kill()
        self._proc.stdout.close()
        self._proc.wait()
        super().close()


def iter_tar(stream: BinaryIO, check_headers: bool = False) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, data)`` for every regular file of a tar stream, in order.

    Understands ustar prefixes, GNU long names and pax ``path`` records; directories and other
    entries are skipped. Raises TarError on a header without the ustar magic or with a bad size field, a
    member declaring more than :data:`MAX_MEMBER_BYTES`, a short member, or a missing end marker;
    ``check_headers`` also verifies every header checksum
    (about half of the parsing time, so the verifier does it and the training reader does not).
    """
    read = stream.read
    long_name: str | None = None
    offset = 0
    pad, padded, padded_at = 0, b"", 0  # the last member's padding (read with the next header), its header, offset
    while True:
        want = pad + BLOCK
        header = read(want)
        if len(header) < want:
            header = _read_rest(read, header, want)
        if len(header) < pad:
            name = padded[:100].split(b"\0", 1)[0].decode(errors="replace")
            raise TarError(f"truncated tar: member {name} at byte {padded_at} is cut short")
        if len(header) < want:
            raise TarError(f"truncated tar: archive ends at byte {offset + len(header)} without an end marker")
        if pad:
            offset += pad
            header = header[pad:]
        if header == _ZERO_BLOCK:
            return
        if header[257:262] != b"ustar":
            raise TarError(f"bad tar header at byte {offset} (no ustar magic)")
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            if check_headers and int(header[148:156].strip(b"\0 "), 8) != \
                    sum(header[:148]) + 256 + sum(header[156:]):
                raise TarError(f"bad tar header checksum at byte {offset}")
        except ValueError:
            raise TarError(f"bad tar header at byte {offset} (size or checksum field)") from None
        kind = header[156:157]
        if size > (MAX_MEMBER_BYTES if kind in (b"0", b"\0", b"7") else MAX_NAME_BYTES):
            name = header[:100].split(b"\0", 1)[0].decode(errors="replace")
            raise TarError(f"member {name} at byte {offset} declares {size} bytes, more than a store member holds")
        data = read(size)
        if len(data) < size:
            data = _read_rest(read, data, size)
        if len(data) < size:
            name = header[:100].split(b"\0", 1)[0].decode(errors="replace")
            raise TarError(f"truncated tar: member {name} at byte {offset} is cut short")
        pad, padded, padded_at = -size % BLOCK, header, offset
        offset += BLOCK + size
        if kind in (b"0", b"\0", b"7"):
            if long_name is not None:
                name, long_name = long_name, None
            else:
                name = _text(header[:100].split(b"\0", 1)[0])
                if header[345] != 0 and header[262] == 0:  # POSIX ustar prefix (GNU puts times there)
                    name = _text(header[345:500].split(b"\0", 1)[0]) + "/" + name
            yield name, data
        elif kind == b"L":
            long_name = _text(data.split(b"\0", 1)[0])
        elif kind == b"x":
            long_name = _pax_path(data) or long_name


def _read_rest(read, data: bytes, size: int) -> bytes:
    """Complete a short read (network and pipe streams may return less than asked before the end)."""
    parts, got = [data], len(data)
    while got < size:
        chunk = read(size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _pax_path(data: bytes) -> str | None:
    """The ``path`` of a pax extended header (records ``"<length> <key>=<value>\\n"``); a malformed one raises
    TarError."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        if length <= space - pos or pos + length > len(data):
            raise TarError(f"bad pax header record at offset {pos}")
        record = data[space + 1: pos + length - 1]
        pos += length
        k, _, v = record.partition(b"=")
        if k == b"path":
            return _text(v)
    return None


def _text(name: bytes) -> str:
    """A member name as text; one that is not UTF-8 is a TarError (store keys are digits)."""
    try:
        return name.decode()
    except UnicodeDecodeError:
        raise TarError(f"member name {name[:80]!r} is not UTF-8") from None


def split_name(name: str) -> tuple[str, str]:
    """``"dir/000000397133.depth.png" -> ("dir/000000397133", "depth.png")`` (webdataset's key rule)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def iter_samples(stream: BinaryIO, check_headers: bool = False) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive tar members by key: yield ``(key, {ext: bytes})`` per sample.

    A key that shows up again after another key (members not contiguous), or that is not the 12 digits of a
    store key (``../x``, an absolute path, dots), raises TarError. A TarError carries ``pending``: the member
    names of the sample being read when it came (see :func:`whole_samples`).
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    try:
        for name, data in iter_tar(stream, check_headers):
            k, ext = split_name(name)
            if not (len(k) == KEY_DIGITS and k.isascii() and k.isdigit()):  # keys become file names on export
                raise TarError(f"member {name[:80]!r}: its key is not {KEY_DIGITS} digits")
            if k != key:
                if key is not None:
                    yield key, members
                if k in seen:
                    raise TarError(f"key {k} appears twice (members not contiguous)")
                seen.add(k)
                key, members = k, {}
            if ext in members:
                raise TarError(f"member {name} appears twice")
            members[ext] = data
    except TarError as e:
        e.pending = frozenset(members)
        raise
    if key is not None:
        yield key, members


def whole_samples(error: TarError, yielded: int, exts: frozenset[str] | set[str]) -> int:
    """Whole samples before the damage ``error`` reports: the ``yielded`` ones, plus the one being read when it
    came if all its members ``exts`` had arrived (a cut at a member boundary)."""
    return yielded + (1 if getattr(error, "pending", None) == frozenset(exts) else 0)


class HashingReader:
    """A stream (``open_stream(location)``) that keeps the sha256 and size of what is read through it; closing it
    first reads the rest (the tar's trailing blocks, or all that follows a parse error), so the digest covers the
    whole file. Leaving its ``with`` block by any exception other than a StoreError or OSError (Ctrl-C, a
    consumer that stopped early) closes it without that read."""

    CHUNK = 1 << 20

    def __init__(self, location: str) -> None:
        self.location, self.sha256, self.bytes = location, hashlib.sha256(), 0
        self.f = open_stream(location)
        self.error: OSError | None = None
        self.closed = self.complete = False  # complete: read to its end, so the digest is the file's

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.f.read(n)
        except OSError as e:  # kept: the check says the file could not be read, not that it is short
            self.error = self.error or e
            raise
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def close(self, drain: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            while drain and self.read(self.CHUNK):
                pass
            self.complete = drain
        except OSError as e:
            self.error = e
        try:
            self.f.close()
        except OSError as e:  # a pipe: stream whose command failed says so when closed
            self.error = self.error or e

    def __enter__(self) -> "HashingReader":
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        from shards.errors import StoreError

        self.close(drain=kind is None or issubclass(kind, (StoreError, OSError)))
