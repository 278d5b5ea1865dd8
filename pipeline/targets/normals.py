"""Surface normals from uint16 depth with a 3x3 Sobel (DESIGN 5.2), stored as uint8 round((n + 1) * 127.5)."""

from __future__ import annotations

import numpy as np

DEFAULT_NORMALS_SCALE = 240.0
DEPTH_MAX = 65535.0
FLAT = (128, 128, 255)  # the stored normal (0, 0, 1), also given to the letterbox border


def normals_from_depth(depth_u16: np.ndarray, scale: float = DEFAULT_NORMALS_SCALE,
                       valid: np.ndarray | None = None) -> np.ndarray:
    """Normals of a quantised depth map.

    D = depth / 65535 * scale (read as unsigned, converted to float before any arithmetic, so no
    wrap-around edge), gx = Sobel_x(D), gy = Sobel_y(D) (image y grows down), n = (gx, gy, 1) / |.|.

    Args:
        depth_u16: (S, S) uint16 depth.
        scale: depth range the 0..65535 values are scaled to before the Sobel.
        valid: optional (S, S) bool content mask; the Sobel then sees only the content (edges replicated)
            and the border gets the flat normal (0, 0, 1).

    Returns:
        (S, S, 3) uint8, channels x, y, z.
    """
    import cv2

    depth_u16 = np.asarray(depth_u16)
    if depth_u16.dtype != np.uint16 or depth_u16.ndim != 2:
        raise ValueError(f"normals need a 2-D uint16 depth map, got {depth_u16.dtype} {depth_u16.shape}")
    rows, cols = _content_slices(valid, depth_u16.shape)
    d = depth_u16[rows, cols].astype(np.float32)  # unsigned -> float first: no wrap-around edge
    h, w = depth_u16.shape
    if d.size == 0:
        return np.full((h, w, 3), FLAT, np.uint8)
    k = float(scale) / DEPTH_MAX  # D = depth * scale / 65535, folded into the Sobel
    gx = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3, scale=k, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3, scale=k, borderType=cv2.BORDER_REPLICATE)
    norm = gx * gx
    norm += gy * gy
    norm += np.float32(1.0)
    np.sqrt(norm, out=norm)  # |(gx, gy, 1)| >= 1, so nothing to guard against
    half = np.float32(127.5) / norm
    # round((n + 1) * 127.5) = round(n * 127.5 + 127.5), saturated to uint8 by OpenCV
    x = cv2.add(cv2.multiply(gx, half), 127.5, dtype=cv2.CV_8U)
    y = cv2.add(cv2.multiply(gy, half), 127.5, dtype=cv2.CV_8U)
    z = cv2.add(half, 127.5, dtype=cv2.CV_8U)
    return cv2.copyMakeBorder(cv2.merge([x, y, z]), rows.start, h - rows.stop, cols.start, w - cols.stop,
                              cv2.BORDER_CONSTANT, value=FLAT)


def decode_normals(normals_u8: np.ndarray) -> np.ndarray:
    """Stored uint8 normals back to float32 unit-ish vectors in [-1, 1]."""
    return np.asarray(normals_u8, np.float32) / 127.5 - 1.0


def _content_slices(valid: np.ndarray | None, shape: tuple[int, int]) -> tuple[slice, slice]:
    if valid is None:
        return slice(0, shape[0]), slice(0, shape[1])
    ys, xs = np.nonzero(np.asarray(valid).any(axis=1))[0], np.nonzero(np.asarray(valid).any(axis=0))[0]
    if ys.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)
