"""Letterbox geometry (shards.geometry): points both ways, pixels aligned with points, label / continuous maps,
the valid mask."""

from __future__ import annotations

import numpy as np
import pytest

from shards.geometry import Letterbox, letterbox_image, map_continuous, map_labels

SIZES = [(640, 480), (480, 640), (333, 500), (512, 512), (1000, 97), (100, 60)]


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_fit_keeps_aspect_and_centres(w: int, h: int) -> None:
    box = Letterbox.fit(w, h, 256)
    assert max(box.resized_w, box.resized_h) == 256
    assert abs(box.resized_w / box.resized_h - w / h) < 2 / min(box.resized_w, box.resized_h) + 1e-9
    assert box.offset_x == (256 - box.resized_w) // 2 and box.offset_y == (256 - box.resized_h) // 2
    assert Letterbox.from_meta(box.to_meta()) == box


@pytest.mark.parametrize(("w", "h"), SIZES)
def test_keypoints_round_trip_within_half_a_pixel(w: int, h: int) -> None:
    rng = np.random.default_rng(w * h)
    pts = rng.uniform([0, 0], [w, h], size=(200, 2))
    box = Letterbox.fit(w, h, 256)
    store = np.round(box.to_store(pts), 3)  # pose.json keeps 3 decimals
    back = box.to_original(store)
    assert np.abs(back - pts).max() < 0.5
    assert (store >= 0).all() and (store <= 256).all()


@pytest.mark.parametrize(("w", "h"), [(640, 480), (480, 640), (300, 451)])
def test_pixels_land_where_the_points_say(w: int, h: int) -> None:
    """A blob drawn at a known original point is found at to_store(point) after letterboxing."""
    box = Letterbox.fit(w, h, 256)
    for px, py in [(w * 0.3, h * 0.7), (w * 0.81, h * 0.12)]:
        y, x = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
        blob = np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * 6.0 ** 2))
        image = np.repeat((blob * 255).astype(np.uint8)[:, :, None], 3, axis=2)
        small = letterbox_image(image, box)[:, :, 0].astype(np.float64)
        ys, xs = np.mgrid[0:256, 0:256] + 0.5
        cx, cy = (small * xs).sum() / small.sum(), (small * ys).sum() / small.sum()
        ex, ey = box.to_store(np.array([[px, py]]))[0]
        assert abs(cx - ex) < 0.5 and abs(cy - ey) < 0.5
        ox, oy = box.to_original(np.array([[cx, cy]]))[0]
        assert abs(ox - px) < 0.5 / box.scale_xy[0] and abs(oy - py) < 0.5 / box.scale_xy[1]


def test_border_is_black_and_valid_mask_matches_content() -> None:
    box = Letterbox.fit(640, 480, 256)
    out = letterbox_image(np.full((480, 640, 3), 200, np.uint8), box)
    valid = box.valid_mask()
    assert valid.sum() == 256 * 192 and valid[32:224].all() and not valid[:32].any()
    assert (out[valid] == 200).all() and (out[~valid] == 0).all()


def test_labels_use_nearest_and_void_border() -> None:
    box = Letterbox.fit(400, 200, 100)
    labels = np.zeros((200, 400), np.uint8)
    labels[:, 200:] = 7
    labels[100:, :] = 131
    out = map_labels(labels, box, fill=255)
    assert set(np.unique(out).tolist()) == {0, 7, 131, 255}  # no blended ids
    assert (out[~box.valid_mask()] == 255).all()
    assert out[30, 10] == 0 and out[30, 90] == 7 and out[70, 50] == 131
    assert map_labels(labels.astype(np.int64), box).dtype == np.int64


def test_continuous_maps_average_and_fill() -> None:
    box = Letterbox.fit(200, 100, 50)
    values = np.tile(np.arange(200, dtype=np.float32), (100, 1))
    out = map_continuous(values, box, fill=-1.0)
    assert out.dtype == np.float32 and out.shape == (50, 50)
    inner = out[box.content]
    assert np.allclose(inner[:, 0], 1.5) and np.allclose(inner[:, -1], 197.5)  # area average of 4 columns
    assert (out[~box.valid_mask()] == -1.0).all()
    up = map_continuous(np.ones((10, 20), np.float32), Letterbox.fit(20, 10, 64))
    assert np.allclose(up[Letterbox.fit(20, 10, 64).content], 1.0)


def test_wrong_input_size_is_refused() -> None:
    with pytest.raises(ValueError, match="original image"):
        map_labels(np.zeros((10, 10), np.uint8), Letterbox.fit(20, 10, 32))
    with pytest.raises(ValueError):
        Letterbox.fit(0, 10, 32)


@pytest.mark.parametrize(("w", "h"), [(640, 480), (640, 427), (1024, 768), (1030, 500)])
def test_fast_shrink_stays_close_to_a_plain_area_resize(w: int, h: int) -> None:
    import cv2

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
    box = Letterbox.fit(w, h, 256)
    ours = letterbox_image(image, box)[box.content].astype(np.float64)
    ref = cv2.resize(image, (box.resized_w, box.resized_h), interpolation=cv2.INTER_AREA).astype(np.float64)
    assert np.abs(ours - ref).mean() < 2.5  # grey levels, on a fine noise texture (worst case)


@pytest.mark.parametrize(("w", "h"), [(640, 480), (427, 640), (256, 256), (100, 37)])
def test_letterbox_maps_points_both_ways(w: int, h: int) -> None:
    box = Letterbox.fit(w, h, 256)
    pts = np.array([[0.0, 0.0], [w, h], [w * 0.3, h * 0.7]])
    store = box.to_store(pts)
    assert np.all(store >= 0) and np.all(store <= 256)
    np.testing.assert_allclose(box.to_original(store), pts, atol=1e-9)
    x0, y0 = box.offset
    np.testing.assert_allclose(store[0], [x0, y0])
    np.testing.assert_allclose(store[1], [x0 + box.resized[0], y0 + box.resized[1]])
    image = np.full((h, w, 3), 200, np.uint8)
    boxed = letterbox_image(image, box)
    assert boxed.shape == (256, 256, 3)
    assert int(boxed[box.valid_mask()].min()) == 200 and int(boxed[~box.valid_mask()].max(initial=0)) == 0
    assert Letterbox.from_meta({"orig_size": [w, h], "size": 256, "offset": list(box.offset),
                                "resized": list(box.resized), "scale": 256 / max(w, h)}) == box


def test_points_keep_their_shape_and_flat_polygons_become_pairs() -> None:
    box = Letterbox.fit(640, 480, 256)
    grid = np.random.default_rng(1).uniform(0, 480, (2, 3, 2))
    store = box.to_store(grid)
    assert store.shape == (2, 3, 2)
    np.testing.assert_array_equal(store.reshape(-1, 2), box.to_store(grid.reshape(-1, 2)))
    np.testing.assert_array_equal(box.to_original(store), box.to_original(store.reshape(-1, 2)).reshape(2, 3, 2))
    flat = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]  # a COCO polygon
    np.testing.assert_array_equal(box.to_store(flat), box.to_store(np.reshape(flat, (3, 2))))
    np.testing.assert_allclose(box.to_store([[0.0, 0.0], [640.0, 480.0]]), [[0, 32], [256, 224]])
