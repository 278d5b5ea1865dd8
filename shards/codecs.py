"""Encoders and decoders of store members, chosen by codec name from the schema; no pickle anywhere.

Images go through OpenCV (and simplejpeg for decoding JPEG when installed), never through webdataset's
default image decoder, which truncates 16-bit PNG to 8 bits.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import math
import struct
import zlib
from typing import Any, Callable

import numpy as np

from shards.errors import parse_json
from shards.schema import MAX_STORE_SIZE, Column, Member, resolve_shape

JPEG_QUALITY = 95
PNG_COMPRESSION = 1  # OpenCV level 0..9: level 1 encodes ~35% faster than 3 for ~1% more bytes on depth/normals

try:  # optional fast path, about 2x OpenCV for decoding small JPEGs
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None

try:  # optional ISA-L: deflates PNG rows ~4x faster than libdeflate level 1 (~10x zlib) into the same size
    from isal.isal_zlib import compress as _isal_compress
except ImportError:  # pragma: no cover - depends on the environment
    _isal_compress = None

try:  # optional libdeflate: inflates about 2x faster than zlib (and ~20% faster than ISA-L)
    from deflate import zlib_decompress as _libdeflate_zlib
except ImportError:  # pragma: no cover - depends on the environment
    _libdeflate_zlib = None

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_PNG_CHANNELS = {0: 1, 2: 3}  # colour type -> channels (gray, RGB); others go through OpenCV
#: the most pixels a store member may declare unless the caller knows the store's size S: decoding reads the
#: image's size from its header first, so a small file declaring a huge image is refused before it is inflated
MAX_MEMBER_PIXELS = MAX_STORE_SIZE * MAX_STORE_SIZE


class CodecError(ValueError):
    """A member could not be encoded or decoded."""


def _cv2():
    import cv2

    cv2.setNumThreads(1)  # decoding runs inside loader workers; OpenCV's own threads only contend
    return cv2


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array (or (H, W) gray) as JPEG."""
    image = _check_array(image, np.uint8, (2, 3))
    cv2 = _cv2()
    image = np.ascontiguousarray(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image  # 40x faster than a [..., ::-1] copy
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CodecError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes, max_pixels: int = MAX_MEMBER_PIXELS) -> np.ndarray:
    """Decode JPEG bytes to an (H, W, 3) uint8 RGB array; a header declaring more than ``max_pixels`` pixels (or
    data that is not JPEG) is a CodecError before anything is decoded."""
    _check_pixels(jpeg_size(data), max_pixels)
    if _simplejpeg is not None:
        try:
            return _simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError as e:
            raise CodecError(f"corrupt JPEG: {e}") from None
    cv2 = _cv2()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise CodecError("corrupt JPEG")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def encode_png(image: np.ndarray, compression: int = PNG_COMPRESSION) -> bytes:
    """Encode (H, W) or (H, W, 3) uint8/uint16 as PNG; 3-channel arrays are taken as RGB.

    Every row uses one PNG filter so that :func:`decode_png` can undo it vectorised: ``None`` for
    one-channel uint8 (label maps and masks, which compress as runs), ``Up`` for the rest (smooth maps).
    With ISA-L (the ``isal`` package) the PNG is assembled here and deflated by ISA-L at level
    ``min(compression, 3)``: about 10x faster than zlib at level 1 for the same size. Without it
    OpenCV encodes (:func:`png_encoder` says which). The result is deterministic either way.
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise CodecError(f"PNG stores uint8 or uint16, got {image.dtype}")
    image = _check_array(image, image.dtype, (2, 3))
    label_like = image.ndim == 2 and image.dtype == np.uint8
    if _isal_compress is not None:
        return _encode_png_fast(image, min(compression, 3), up=not label_like)
    cv2 = _cv2()
    bgr = image[..., ::-1] if image.ndim == 3 else image
    png_filter = cv2.IMWRITE_PNG_FILTER_NONE if label_like else cv2.IMWRITE_PNG_FILTER_UP
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, compression,
                                                              cv2.IMWRITE_PNG_FILTER, png_filter])
    if not ok:
        raise CodecError("PNG encoding failed")
    return buf.tobytes()


def png_encoder() -> str:
    """Which library deflates the PNGs :func:`encode_png` writes ("isal" or "opencv"): their bytes differ, so
    a build records it in its fingerprints."""
    return "isal" if _isal_compress is not None else "opencv"


def _encode_png_fast(image: np.ndarray, compression: int, up: bool) -> bytes:
    """A non-interlaced gray / RGB PNG, 8 or 16 bits, every row filtered ``Up`` (or ``None``), one IDAT."""
    height, width = image.shape[:2]
    depth = 16 if image.dtype == np.uint16 else 8
    rows = (image.astype(">u2") if depth == 16 else image).reshape(height, -1).view(np.uint8)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2 if up else 0
    if up:  # row 0 has an all-zero row above it, so it stays as it is
        filtered[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    else:
        filtered[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, depth, 2 if image.ndim == 3 else 0, 0, 0, 0)
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", _isal_compress(filtered, compression)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join((len(data).to_bytes(4, "big"), kind, data, zlib.crc32(data, zlib.crc32(kind)).to_bytes(4, "big")))


def decode_png(data: bytes, max_pixels: int = MAX_MEMBER_PIXELS) -> np.ndarray:
    """Decode PNG bytes exactly: uint16 stays uint16; 3-channel results are RGB.

    PNGs whose rows all use the ``None`` or all the ``Up`` filter (what :func:`encode_png` writes) are
    inflated and unfiltered here with numpy; any other PNG goes through OpenCV. Data that is not PNG, or whose
    header declares more than ``max_pixels`` pixels, is a CodecError before anything is inflated.
    """
    _check_pixels(png_size(data), max_pixels)
    fast = _decode_png_fast(data)
    if fast is not None:
        return fast
    cv2 = _cv2()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise CodecError("corrupt PNG")
    if arr.ndim == 3:
        arr = arr[..., 2::-1].copy() if arr.shape[2] >= 3 else arr
    return arr


def png_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from a PNG's header; data that does not start as a PNG is a CodecError."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise CodecError("not PNG data (no PNG signature and header)")
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        raise CodecError("corrupt PNG: bad IHDR checksum")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from a JPEG's frame header, found by walking the marker segments before the scan; data
    that is not JPEG, or has no frame header before its first scan, is a CodecError."""
    if data[:2] != b"\xff\xd8":
        raise CodecError("not JPEG data (no start-of-image marker)")
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise CodecError(f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF and length >= 7 and pos + 9 <= end:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return height, width
        pos += 2 + length
    raise CodecError("corrupt JPEG: no frame header before the image data")


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    height, width = size
    if not height or not width:
        raise CodecError(f"image header declares {width}x{height} pixels")
    if height * width > max_pixels:
        raise CodecError(f"image header declares {width}x{height} pixels, more than the {max_pixels} a member "
                         "of this store may hold (a decompression bomb or a damaged header)")


def _decode_png_fast(data: bytes) -> np.ndarray | None:
    """Vectorised decode of a non-interlaced 8/16-bit gray or RGB PNG with one filter; None if not such. ``data``
    has a header :func:`png_size` accepted (signature, IHDR and its checksum)."""
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = _PNG_CHANNELS.get(ctype)
    if channels is None or depth not in (8, 16) or interlace or not width or not height:
        return None
    parts, pos, end, view = [], 33, len(data), memoryview(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            parts.append(view[pos + 8:pos + 8 + length])  # no copy until the join
        elif kind == b"IEND":
            break
        pos += 12 + length
    stride = width * channels * depth // 8 + 1
    size = height * stride
    stream = parts[0] if len(parts) == 1 else b"".join(parts)
    try:
        raw = _libdeflate_zlib(stream, size) if _libdeflate_zlib is not None else _inflate(stream, size)
    except Exception as e:  # libdeflate raises its own error types
        raise CodecError(f"corrupt PNG: {e}") from None
    if len(raw) != size:
        raise CodecError(f"corrupt PNG: image data holds {len(raw)} bytes, expected {size}")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride)
    filters = rows[:, 0]
    pixels = rows[:, 1:]
    if not filters.any():  # None everywhere
        pixels = np.array(pixels, order="C")  # own, writable copy
    elif (filters[1:] == 2).all() and filters[0] in (0, 2):  # Up everywhere (row 0 has no row above)
        pixels = _cumsum_rows(pixels)
    else:
        return None
    out = pixels.view(">u2").astype(np.uint16) if depth == 16 else pixels
    return out.reshape(height, width, channels) if channels > 1 else out.reshape(height, width)


def _inflate(stream: bytes | memoryview, size: int) -> bytes:
    """zlib-inflate at most ``size + 1`` bytes: a stream holding more is reported by the caller's length check
    without inflating the rest."""
    return zlib.decompressobj().decompress(stream, size + 1)


def _cumsum_rows(pixels: np.ndarray) -> np.ndarray:
    """Running sum mod 256 down the rows (undoes PNG's Up filter), by doubling: log2(H) whole-array adds.

    About 6x faster than ``np.cumsum(axis=0)``, which does not vectorise. The passes alternate between two
    buffers (an add in place over overlapping rows would make numpy copy its input first).
    """
    out = np.empty(pixels.shape, np.uint8)  # (H, row bytes)
    h = out.shape[0]
    out[:1] = pixels[:1]
    np.add(pixels[1:], pixels[:-1], out=out[1:])  # the first pass reads the inflated rows in place
    spare, k = np.empty_like(out), 2
    while k < h:
        spare[:k] = out[:k]
        np.add(out[k:], out[:-k], out=spare[k:])
        out, spare, k = spare, out, k * 2
    return out


def encode_npy(array: np.ndarray) -> bytes:
    """Serialise an array as .npy; object arrays are refused."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise CodecError("object arrays cannot be stored (they would need pickle)")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """Load .npy bytes with pickle disabled; a version-1 file of a plain dtype skips numpy's header parser
    (its header is read once per distinct header text)."""
    layout, start = None, 0
    if data[:8] == _NPY_MAGIC and len(data) >= 10:
        start = 10 + int.from_bytes(data[8:10], "little")
        layout = _npy_layout(bytes(data[8:start]))
        if layout is not None and len(data) - start == layout[0].itemsize * math.prod(layout[1]):
            dtype, shape, order = layout
            return np.frombuffer(data, dtype, math.prod(shape), start).reshape(shape, order=order).copy(order="K")
    if layout is not None:  # a plain header whose data is not the size it declares
        raise CodecError(f"corrupt npy: the header declares {layout[1]} {layout[0]} but {len(data) - start} bytes "
                         "of data follow")
    try:  # another header version or dtype: numpy parses the header, and the data must be its declared size
        f = io.BytesIO(data)
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
        if dtype.hasobject or len(data) - f.tell() != dtype.itemsize * math.prod(shape):
            raise ValueError(f"the header declares {shape} {dtype} but {len(data) - f.tell()} bytes of data follow")
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise CodecError(f"corrupt npy: {e}") from None


@functools.lru_cache(maxsize=64)
def _npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], str] | None:
    """(dtype, shape, order) of a version-1 .npy header (length field included); None = leave it to numpy."""
    try:
        d = ast.literal_eval(header[2:].decode("latin1"))
        dtype = np.dtype(d["descr"]) if isinstance(d["descr"], str) else None
        shape = tuple(int(n) for n in d["shape"])
        order = "F" if d["fortran_order"] else "C"
    except (ValueError, TypeError, KeyError, SyntaxError, UnicodeDecodeError):
        return None
    if dtype is None or dtype.hasobject or set(d) != {"descr", "shape", "fortran_order"} or min(shape, default=0) < 0:
        return None
    return dtype, shape, order


def encode_json(obj: Any) -> bytes:
    """Deterministic compact JSON (sorted keys, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


def decode_json(data: bytes) -> Any:
    try:
        return parse_json(data)
    except ValueError as e:  # not UTF-8, not JSON, or nested too deeply for the parser
        raise CodecError(f"corrupt JSON: {e}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _check_array(a: np.ndarray, dtype: Any, ndims: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != dtype:
        raise CodecError(f"expected {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim not in ndims:
        raise CodecError(f"expected {' or '.join(map(str, ndims))} dimensions, got shape {a.shape}")
    return a


ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "jpeg": encode_jpeg, "png": encode_png, "npy": encode_npy, "json": encode_json,
}
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "jpeg": decode_jpeg, "png": decode_png, "npy": decode_npy, "json": decode_json,
}


def encode_member(member: Member, value: Any) -> bytes:
    """Encode one member value; ``bytes`` pass through unchanged (already encoded)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if member.dtype is not None and member.codec != "json":
        value = np.asarray(value)
        if value.dtype != np.dtype(member.dtype):
            raise CodecError(f"member {member.ext!r} must be {member.dtype}, got {value.dtype}")
    return ENCODERS[member.codec](value)


def decode_member(member: Member, data: bytes, size: int | None = None) -> Any:
    """Decode one member's bytes with the project's codec for it.

    With the store size ``size`` (S), an image member whose header declares another height and width than its
    schema shape is a CodecError before it is decoded (never an array of the wrong shape, nor a decompression
    bomb's allocation); without it, images are bounded by :data:`MAX_MEMBER_PIXELS`.
    """
    if size is not None and member.shape is not None and member.codec in _IMAGE_SIZE:
        height, width = _IMAGE_SIZE[member.codec](data)
        want = resolve_shape(member.shape, size)[:2]
        if (height, width) != want:
            raise CodecError(f"image header declares {width}x{height} pixels, the store's members are "
                             f"{want[1]}x{want[0]}")
    return DECODERS[member.codec](data)


_IMAGE_SIZE: dict[str, Callable[[bytes], tuple[int, int]]] = {"png": png_size, "jpeg": jpeg_size}


def encode_sample(col: Column, values: dict[str, Any]) -> dict[str, bytes]:
    """Encode every member of one sample of ``col``; missing or extra members are an error."""
    missing = set(col.exts) - set(values)
    extra = set(values) - set(col.exts)
    if missing or extra:
        raise CodecError(f"column {col.name!r}: missing members {sorted(missing)}, unexpected {sorted(extra)}")
    return {ext: encode_member(col.member(ext), values[ext]) for ext in col.exts}


def decode_sample(col: Column, members: dict[str, bytes], size: int | None = None) -> dict[str, Any]:
    """Decode every member of one sample of ``col`` (``size``: the store size S, see :func:`decode_member`)."""
    return {ext: decode_member(col.member(ext), data, size) for ext, data in members.items()}
