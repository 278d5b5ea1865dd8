"""Scene-text mask: polygons of any number of points rasterised at store size (0 / 255)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

SUBPIXEL_BITS = 4  # OpenCV fixed-point shift: polygon vertices keep 1/16 pixel precision


def rasterise_polygons(polygons: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Fill polygons into an (size, size) uint8 mask.

    Coordinates are continuous store pixels (pixel i covers [i, i + 1)). Three or more points fill a
    polygon (every pixel whose centre is inside, plus OpenCV's rounding rim of at most one pixel), two
    points draw a 1-pixel line, one point marks its pixel; points outside are clipped.

    Args:
        polygons: (N, 2) float arrays of (x, y).
        size: store side S.

    Returns:
        (S, S) uint8 with 255 inside text and 0 elsewhere.
    """
    import cv2

    mask = np.zeros((size, size), np.uint8)
    one = 1 << SUBPIXEL_BITS
    for poly in polygons:
        p = np.asarray(poly, np.float64).reshape(-1, 2)
        p = p[np.isfinite(p).all(axis=1)]
        if len(p) == 0:
            continue
        # pixel centres sit at i + 0.5, OpenCV draws integer coordinates at pixel centres
        fixed = np.rint((np.clip(p, -size, 2 * size) - 0.5) * one).astype(np.int32)
        if len(p) >= 3:
            cv2.fillPoly(mask, [fixed], 255, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
        elif len(p) == 2:
            cv2.line(mask, tuple(fixed[0]), tuple(fixed[1]), 255, 1, cv2.LINE_8, SUBPIXEL_BITS)
        else:
            x, y = np.floor(p[0]).astype(int)
            if 0 <= x < size and 0 <= y < size:
                mask[y, x] = 255
    return mask
