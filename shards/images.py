"""Image files -> the store's RGB: EXIF orientation, grayscale, CMYK, PNG-in-.jpg, 16-bit PNG, alpha.

The one decoder of the project: the pipeline's base stage makes the store's images with it and ``student
predict`` reads its inputs with it, so a photo is the same pixels in both. Everything that cannot give an RGB
image raises :class:`RejectedImage` with a short machine-readable reason (``missing``, ``empty``,
``truncated``, ``undecodable``, ``size-mismatch``, ``too-large``) and a one-line detail.
"""

from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np

JPEG_MAGIC = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112
#: the most pixels an input image may have (``pipeline build-targets --max-image-pixels``): its header is read
#: first, so a small file declaring a huge image (a 255 KiB PNG can declare 16384x16384) is rejected as
#: ``too-large`` before any pixel is decoded. 100 Mpx holds every COCO image (<= 0.4 Mpx) and a 12000x8000 photo.
MAX_IMAGE_PIXELS = 100_000_000


class RejectedImage(Exception):
    """An image the base stage cannot use; ``reason`` is one of missing, empty, truncated, undecodable,
    size-mismatch, too-large, outside-folder, not-a-file."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, rejecting a missing or empty one."""
    from shards.streams import open_regular

    try:
        with open_regular(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise RejectedImage("missing", f"image file not found: {path}") from None
    except OSError as e:
        raise RejectedImage("missing", f"cannot read {path}: {e.strerror or e}") from None
    if not data:
        raise RejectedImage("empty", f"image file is empty: {path}")
    return data


def decode_image_bytes(data: bytes, name: str = "<bytes>", expected_size: tuple[int, int] | None = None,
                       max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode image bytes to RGB uint8 whatever the container says.

    Args:
        data: file content.
        name: used in error messages.
        expected_size: (width, height) the annotations give: an image whose header says another size (either
            orientation) is rejected as ``size-mismatch`` before its pixels are decoded (a small file can
            hold a huge image).
        max_pixels: an image whose header declares more pixels is rejected as ``too-large``, undecoded.

    Returns:
        ``(oriented, raw)``: the (H, W, 3) uint8 RGB image with EXIF orientation applied, and the image as
        stored before orientation (None when no orientation was applied).
    """
    if not data:
        raise RejectedImage("empty", f"image file is empty: {name}")
    if data.startswith(PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise RejectedImage("undecodable", f"PNG without a header: {name}")
        _check_size(struct.unpack(">II", data[16:24]), expected_size, name, max_pixels)
        return _decode_png(data, name), None
    return _decode_pillow(data, name, expected_size, max_pixels)


def _check_size(size: tuple[int, int], expected: tuple[int, int] | None, name: str, max_pixels: int) -> None:
    """Reject an image whose header size is neither ``expected`` (w, h) nor its transpose, or that has more than
    ``max_pixels`` pixels."""
    if expected is not None and tuple(size) not in (tuple(expected), tuple(expected)[::-1]):
        raise RejectedImage("size-mismatch", f"{name} is {size[0]}x{size[1]} but its annotations say "
                                             f"{expected[0]}x{expected[1]}")
    if size[0] * size[1] > max_pixels:
        raise RejectedImage("too-large", f"{name} is {size[0]}x{size[1]}, more than {max_pixels} pixels "
                                         "(--max-image-pixels)")


def _decode_png(data: bytes, name: str) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        reason = "truncated" if b"IEND" not in data[-16:] else "undecodable"
        raise RejectedImage(reason, f"PNG data cannot be decoded: {name}")
    if arr.dtype == np.uint16:  # 16-bit PNG: keep the high byte, rounded
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise RejectedImage("undecodable", f"unsupported PNG sample type {arr.dtype}: {name}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 4:  # BGRA: composite on black, the letterbox colour
        alpha = arr[:, :, 3:4].astype(np.uint16)
        arr = ((arr[:, :, :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, 2::-1])


def _decode_pillow(data: bytes, name: str, expected_size: tuple[int, int] | None, max_pixels: int
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # the size is checked against max_pixels right below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise RejectedImage("undecodable", f"not an image file: {name}") from None
    except Image.DecompressionBombError as e:  # above Pillow's own limit (twice Image.MAX_IMAGE_PIXELS)
        raise RejectedImage("too-large", f"{name}: {e}") from None
    except OSError as e:
        raise RejectedImage("undecodable", f"cannot open image {name}: {e}") from None
    _check_size(img.size, expected_size, name, max_pixels)
    orientation = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    if img.format == "JPEG":
        fast, problem = _decode_simplejpeg(data)
        if problem is not None and "premature end" in problem.lower():  # Pillow would fill the rest with grey
            raise RejectedImage("truncated", f"{name}: {problem}")
        if fast is not None and img.mode in ("RGB", "L") and orientation in _ORIENT:
            return (fast, None) if orientation == 1 else (np.ascontiguousarray(_ORIENT[orientation](fast)), fast)
    try:
        img.load()
    except OSError as e:
        truncated = "truncated" in str(e) or (img.format == "JPEG" and not data.rstrip(b"\0").endswith(JPEG_EOI))
        raise RejectedImage("truncated" if truncated else "undecodable", f"{name}: {e}") from None
    if img.format == "JPEG" and not data.rstrip(b"\0").endswith(JPEG_EOI):
        raise RejectedImage("truncated", f"{name}: JPEG data ends before its end-of-image marker")
    raw = _to_rgb(img)
    if orientation == 1:
        return raw, None
    return _to_rgb(ImageOps.exif_transpose(img)), raw


#: EXIF orientation -> the array operation of Pillow's ``ImageOps.exif_transpose`` (a test holds them equal)
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # flipped
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed
    8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise
}


def _decode_simplejpeg(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """libjpeg-turbo's strict decode: (RGB, None), or (None, libjpeg's complaint) for Pillow to decide on.

    Pillow decodes leniently: entropy-coded data that ends early ("premature end of data segment", also when a
    cut file was given an end marker) becomes grey rows; the caller rejects that. Other complaints (extraneous
    bytes before a marker, a colour space to convert) leave the image to Pillow."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - depends on the environment
        return None, None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True), None
    except ValueError as e:
        return None, str(e)


def _to_rgb(img) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, np.uint32 if img.mode == "I" else np.uint16).astype(np.uint32)
        gray = ((np.clip(arr, 0, 65535) + 128) // 257).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        from PIL import Image

        img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), np.uint8))
