"""Normals from depth (DESIGN 5.2): analytic values on tilted planes, no signed/unsigned edge, the scale parameter."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.samples import normals_sample
from pipeline.targets.normals import decode_normals, normals_from_depth


def _plane(a: float, b: float, c: float, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.rint(a * x + b * y + c).astype(np.uint16)


def _analytic(a: float, b: float, scale: float) -> np.ndarray:
    # D = depth * scale / 65535; a 3x3 Sobel of a ramp of slope s is 8 s
    gx, gy = 8 * a * scale / 65535, 8 * b * scale / 65535
    n = np.array([gx, gy, 1.0]) / (np.sqrt(gx * gx + gy * gy + 1.0) + 1e-8)
    return np.rint((n + 1) * 127.5)


@pytest.mark.parametrize(("a", "b"), [(300.0, 0.0), (0.0, -250.0), (180.0, 120.0), (-400.0, 350.0)])
def test_tilted_plane_gives_the_analytic_normal_off_the_border(a: float, b: float) -> None:
    depth = _plane(a, b, 30000.0)
    out = normals_from_depth(depth, scale=240.0)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    inner = out[1:-1, 1:-1].reshape(-1, 3).astype(int)
    expected = _analytic(a, b, 240.0)
    assert np.abs(inner - expected).max() <= 1  # depth rounding to integers moves at most one step
    assert (np.abs(inner - expected).max(axis=1) == 0).mean() > 0.95


def test_direction_follows_the_image_axes() -> None:
    n = decode_normals(normals_from_depth(_plane(500.0, 0.0, 1000.0)))[32, 32]
    assert n[0] > 0.5 and abs(n[1]) < 0.01 and n[2] > 0  # depth grows with x -> +x component
    n = decode_normals(normals_from_depth(_plane(0.0, 500.0, 1000.0)))[32, 32]
    assert n[1] > 0.5 and abs(n[0]) < 0.01  # image y grows down


def test_flat_depth_is_straight_up() -> None:
    out = normals_from_depth(np.full((16, 16), 1234, np.uint16))
    assert (out.reshape(-1, 3) == (128, 128, 255)).all()


def test_no_false_edge_where_a_signed_reading_would_wrap() -> None:
    # a smooth ramp through 32767 -> 32768: read as int16 it would jump by 65536 and draw an edge
    depth = _plane(20.0, 0.0, 32768 - 20.0 * 32)
    assert depth.min() < 32768 <= depth.max()
    out = normals_from_depth(depth)
    assert np.ptp(out[1:-1, 1:-1].reshape(-1, 3).astype(int), axis=0).max() <= 1


def test_scale_parameter_changes_the_tilt() -> None:
    depth = _plane(300.0, 0.0, 10000.0)
    steep = decode_normals(normals_from_depth(depth, scale=480.0))[32, 32]
    gentle = decode_normals(normals_from_depth(depth, scale=60.0))[32, 32]
    assert steep[0] > gentle[0] > 0
    assert np.allclose(normals_from_depth(depth, scale=60.0)[32, 32], _analytic(300.0, 0.0, 60.0), atol=1)


def test_letterbox_border_is_flat_and_content_edge_has_no_false_gradient() -> None:
    meta = {"orig_size": [64, 32], "size": 64, "scale": 1.0, "offset": [0, 16], "resized": [64, 32]}
    depth = np.zeros((64, 64), np.uint16)
    depth[16:48] = 40000  # content: a flat plane; the border is 0
    out = normals_sample(depth, 240.0, meta=meta)["normals.png"]
    assert (out.reshape(-1, 3) == (128, 128, 255)).all()
    bare = normals_sample(depth)["normals.png"]  # without the geometry the border step shows
    assert (bare[15:17, 5] != (128, 128, 255)).any()


def test_rejects_non_uint16() -> None:
    with pytest.raises(ValueError, match="uint16"):
        normals_from_depth(np.zeros((4, 4), np.int16))


def test_a_portrait_letterbox_gets_flat_side_borders_and_the_content_its_own_normals() -> None:
    depth = np.zeros((64, 64), np.uint16)
    depth[:, 20:44] = _plane(300.0, -200.0, 30000.0)[:, :24]
    valid = np.zeros((64, 64), bool)
    valid[:, 20:44] = True
    out = normals_from_depth(depth, 240.0, valid)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    for side in (out[:, :20], out[:, 44:]):
        assert (side.reshape(-1, 3) == (128, 128, 255)).all()
    np.testing.assert_array_equal(out[:, 20:44], normals_from_depth(np.ascontiguousarray(depth[:, 20:44]), 240.0))
    empty = normals_from_depth(depth, 240.0, np.zeros((64, 64), bool))
    assert (empty.reshape(-1, 3) == (128, 128, 255)).all()
