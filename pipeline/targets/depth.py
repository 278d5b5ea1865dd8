"""Depth quantisation (DESIGN 5.2): the valid pixels' min..max mapped to 0..65535, raw range kept for recovery."""

from __future__ import annotations

from typing import Any

import numpy as np

DEPTH_MAX = 65535


def quantise_depth(depth: np.ndarray, valid: np.ndarray | None = None,
                   kind: str = "relative") -> tuple[np.ndarray, dict[str, Any]]:
    """Quantise a store-geometry depth map to uint16.

    Args:
        depth: (H, W) float depth (relative inverse depth, larger = nearer, or metres).
        valid: (H, W) bool, True on image content (the letterbox border is stored as 0); None: every pixel
            (the fast path: pass the content rectangle alone).
        kind: "relative" or "metric".

    Returns:
        ``(depth_u16, info)`` where ``info`` is the ``depth.json`` dict: kind, raw ``min`` and ``max`` of the
        valid pixels, and ``scale`` = raw units per uint16 step (raw = min + value * scale).
    """
    if kind not in ("relative", "metric"):
        raise ValueError(f"depth kind must be 'relative' or 'metric', got {kind!r}")
    depth = np.asarray(depth, np.float32)
    if valid is not None and depth.shape != valid.shape:
        raise ValueError(f"depth {depth.shape} and valid mask {valid.shape} differ in shape")
    values = depth if valid is None else depth[valid]
    finite = np.isfinite(values)
    clean = bool(finite.all())  # no NaN or inf to replace
    if not clean:
        values = values[finite]
    if values.size == 0:
        return np.zeros(depth.shape, np.uint16), {"kind": kind, "min": 0.0, "max": 0.0, "scale": 0.0}
    lo, hi = float(values.min()), float(values.max())
    out = np.zeros(depth.shape, np.uint16)
    if hi > lo:
        if not clean or valid is not None:  # the border may hold anything; it is not stored
            depth = np.nan_to_num(depth, nan=lo, posinf=hi, neginf=lo)
        q = (depth - lo) * (DEPTH_MAX / (hi - lo))
        np.rint(q, out=q)
        np.clip(q, 0, DEPTH_MAX, out=q)
        if valid is None:
            out = q.astype(np.uint16)
        else:
            out[valid] = q[valid].astype(np.uint16)
    return out, {"kind": kind, "min": lo, "max": hi, "scale": (hi - lo) / DEPTH_MAX}


def recover_depth(depth_u16: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Invert :func:`quantise_depth` (up to quantisation): float32 raw teacher values."""
    return np.float32(info["min"]) + np.asarray(depth_u16, np.float32) * np.float32(info["scale"])
