"""Depth quantisation (DESIGN 5.2): the content pixels' min..max mapped to 0..65535, raw range kept for recovery."""

from __future__ import annotations

from typing import Any

import numpy as np

DEPTH_MAX = 65535


def quantise_depth(depth: np.ndarray, kind: str = "relative") -> tuple[np.ndarray, dict[str, Any]]:
    """Quantise a depth map to uint16 (the caller passes the letterbox content alone; the border is stored as 0).

    Args:
        depth: (H, W) float depth (relative inverse depth, larger = nearer, or metres); NaN and inf are left
            out of the range and clipped to it.
        kind: "relative" or "metric".

    Returns:
        ``(depth_u16, info)`` where ``info`` is the ``depth.json`` dict: kind, raw ``min`` and ``max`` of the
        finite pixels, and ``scale`` = raw units per uint16 step (raw = min + value * scale).
    """
    if kind not in ("relative", "metric"):
        raise ValueError(f"depth kind must be 'relative' or 'metric', got {kind!r}")
    depth = np.asarray(depth, np.float32)
    finite = np.isfinite(depth)
    clean = bool(finite.all())  # no NaN or inf to replace
    values = depth if clean else depth[finite]
    if values.size == 0:
        return np.zeros(depth.shape, np.uint16), {"kind": kind, "min": 0.0, "max": 0.0, "scale": 0.0}
    lo, hi = float(values.min()), float(values.max())
    info = {"kind": kind, "min": lo, "max": hi, "scale": (hi - lo) / DEPTH_MAX}
    if hi == lo:
        return np.zeros(depth.shape, np.uint16), info
    if not clean:
        depth = np.nan_to_num(depth, nan=lo, posinf=hi, neginf=lo)
    q = (depth - lo) * (DEPTH_MAX / (hi - lo))
    np.rint(q, out=q)
    np.clip(q, 0, DEPTH_MAX, out=q)
    return q.astype(np.uint16), info


def recover_depth(depth_u16: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Invert :func:`quantise_depth` (up to quantisation): float32 raw teacher values."""
    return np.float32(info["min"]) + np.asarray(depth_u16, np.float32) * np.float32(info["scale"])
