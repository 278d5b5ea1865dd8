"""Depth quantisation (DESIGN 5.2): the valid pixels' min..max mapped to 0..65535, raw range kept for recovery."""

from __future__ import annotations

from typing import Any

import numpy as np

DEPTH_MAX = 65535


def quantise_depth(depth: np.ndarray, valid: np.ndarray, kind: str = "relative") -> tuple[np.ndarray, dict[str, Any]]:
    """Quantise a store-geometry depth map to uint16.

    Args:
        depth: (S, S) float depth in store geometry (relative inverse depth, larger = nearer, or metres).
        valid: (S, S) bool, True on image content; the letterbox border is stored as 0.
        kind: "relative" or "metric".

    Returns:
        ``(depth_u16, info)`` where ``info`` is the ``depth.json`` dict: kind, raw ``min`` and ``max`` of the
        valid pixels, and ``scale`` = raw units per uint16 step (raw = min + value * scale).
    """
    if kind not in ("relative", "metric"):
        raise ValueError(f"depth kind must be 'relative' or 'metric', got {kind!r}")
    depth = np.asarray(depth, np.float32)
    if depth.shape != valid.shape:
        raise ValueError(f"depth {depth.shape} and valid mask {valid.shape} differ in shape")
    values = depth[valid]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros(depth.shape, np.uint16), {"kind": kind, "min": 0.0, "max": 0.0, "scale": 0.0}
    lo, hi = float(values.min()), float(values.max())
    out = np.zeros(depth.shape, np.uint16)
    if hi > lo:
        q = (np.nan_to_num(depth, nan=lo, posinf=hi, neginf=lo) - lo) * (DEPTH_MAX / (hi - lo))
        out[valid] = np.clip(np.rint(q[valid]), 0, DEPTH_MAX).astype(np.uint16)
    return out, {"kind": kind, "min": lo, "max": hi, "scale": (hi - lo) / DEPTH_MAX}


def recover_depth(depth_u16: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Invert :func:`quantise_depth` (up to quantisation): float32 raw teacher values."""
    return np.float32(info["min"]) + np.asarray(depth_u16, np.float32) * np.float32(info["scale"])
