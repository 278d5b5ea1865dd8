"""Stage sample functions: base (meta), pose from the ground-truth teacher (persons, crowd), depth, panoptic, text;
decoding odd and broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pipeline.coco import ImageRecord, load_split
from pipeline.samples import (RejectedImage, base_sample, decode_image, depth_sample, panoptic_sample, pose_sample,
                              text_sample)
from pipeline.targets.depth import recover_depth
from pipeline.targets.text import rasterise_polygons
from shards.codecs import encode_png
from shards.geometry import Letterbox
from shards.schema import COLUMNS


def _meta(w: int, h: int, size: int) -> dict:
    return {"id": 1, "file_name": "x.jpg", **Letterbox.fit(w, h, size).to_meta()}


def _pose(rec: ImageRecord, size: int) -> dict:
    """The pose.json the pose-gt teacher's prediction maps to, in the letterbox of the base sample."""
    from teachers import TeacherInput, create_teacher

    members, image = base_sample(rec, size)
    (pred,) = create_teacher("pose-gt")([TeacherInput(image, rec.image_id, rec.to_record())])
    pose = pose_sample(pred, members["meta.json"], "pose-gt")["pose.json"]
    assert pose["source"] == "pose-gt"
    return pose


def test_base_sample_members_and_pose_gt_keypoints(demo_root: Path) -> None:
    rec = next(r for r in load_split(demo_root, "train2017") if r.image_id == 1000)
    members, image = base_sample(rec.to_record(), 256)
    assert set(members) == set(COLUMNS["base"].exts)
    meta = members["meta.json"]
    assert meta == {"id": 1000, "file_name": "000000001000.jpg", "orig_size": [640, 480], "size": 256,
                    "scale": 0.4, "offset": [0, 32], "resized": [256, 192]}
    person = _pose(rec, 256)["persons"][0]
    x, y, v = rec.persons[0]["keypoints"][0]
    # COCO's pixel indices become continuous store pixels: the centre of pixel x is x + 0.5
    assert person["keypoints"][0] == [pytest.approx((x + 0.5) * 0.4, abs=1e-3),
                                      pytest.approx((y + 0.5) * 0.4 + 32, abs=1e-3), 2]
    bx, by, bw, bh = rec.persons[0]["bbox"]
    assert person["bbox"] == pytest.approx([bx * 0.4, by * 0.4 + 32, bw * 0.4, bh * 0.4], abs=1e-3)
    back = Letterbox.from_meta(meta).to_original(np.array([kp[:2] for kp in person["keypoints"]])) - 0.5
    assert np.abs(back - np.array([kp[:2] for kp in rec.persons[0]["keypoints"]])).max() < 0.5


def test_unlabeled_keypoints_stay_zero(demo_root: Path) -> None:
    rec = next(r for r in load_split(demo_root, "train2017") if r.image_id == 397133)
    kps = _pose(rec, 128)["persons"][0]["keypoints"]
    assert kps[11] == [0.0, 0.0, 0] and kps[3][2] == 1  # hips not labeled; left ear labeled, hidden


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under numpy 2
def test_crowd_rle_is_mapped_to_store_size(demo_root: Path) -> None:
    from pycocotools import mask as mask_utils

    rec = next(r for r in load_split(demo_root, "train2017") if r.image_id == 1268)
    crowd = _pose(rec, 128)["crowd"][0]
    seg = crowd["segmentation"]
    assert seg["size"] == [128, 128] and isinstance(seg["counts"], str)
    mask = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    orig = mask_utils.decode(mask_utils.frPyObjects(rec.crowd[0]["segmentation"], rec.height, rec.width))
    assert abs(mask.sum() - orig.sum() * 0.2 ** 2) < 0.15 * orig.sum() * 0.2 ** 2
    ys, xs = np.nonzero(mask)
    x, y, w, h = crowd["bbox"]
    assert x - 1 <= xs.min() and xs.max() <= x + w + 1 and y - 1 <= ys.min() and ys.max() <= y + h + 1


def test_crowd_polygons_are_mapped(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode_png(np.zeros((50, 100, 3), np.uint8)))
    rec = ImageRecord(5, "a.png", str(path), 100, 50, keypoints_annotated=True,
                      crowd=[{"bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 10, 30, 30]]}])
    crowd = _pose(rec, 50)["crowd"][0]
    assert crowd["segmentation"] == [[5.0, 17.0, 15.0, 17.0, 15.0, 27.0]]  # scale 0.5, offset (0, 12)
    assert crowd["bbox"] == [5.0, 17.0, 10.0, 10.0]


def test_size_mismatch_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode_png(np.zeros((50, 100, 3), np.uint8)))
    with pytest.raises(RejectedImage) as err:
        base_sample(ImageRecord(5, "a.png", str(path), 90, 50), 64)
    assert err.value.reason == "size-mismatch"


def test_decoding_odd_inputs(tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[0, 0, 3] = 0  # transparent pixel -> black
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    out = decode_image(tmp_path / "a.png")
    assert out.shape == (4, 6, 3) and tuple(out[0, 0]) == (0, 0, 0) and tuple(out[1, 1]) == (200, 0, 0)
    gray16 = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2570)
    (tmp_path / "g.png").write_bytes(encode_png(gray16))
    out = decode_image(tmp_path / "g.png")
    assert np.array_equal(out[..., 1], (gray16 // 257).astype(np.uint8))
    (tmp_path / "cut.png").write_bytes(encode_png(gray16)[:-20])
    with pytest.raises(RejectedImage) as err:
        decode_image(tmp_path / "cut.png")
    assert err.value.reason == "truncated"
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(RejectedImage) as err:
        decode_image(tmp_path / "junk.jpg")
    assert err.value.reason == "undecodable"


def test_depth_sample_quantises_valid_pixels() -> None:
    meta = _meta(40, 20, 32)  # content rows 8..24
    depth = np.tile(np.linspace(2.0, 10.0, 40, dtype=np.float32), (20, 1))
    out = depth_sample({"depth": depth, "kind": "relative"}, meta)
    png, info = out["depth.png"], out["depth.json"]
    assert png.dtype == np.uint16 and png.shape == (32, 32)
    assert info["kind"] == "relative" and png[8:24].max() == 65535 and png[8:24].min() == 0
    assert (png[:8] == 0).all() and (png[24:] == 0).all()
    assert 2.0 <= info["min"] < 2.2 and 9.8 < info["max"] <= 10.0
    rec = recover_depth(png, info)[8:24]
    assert np.allclose(rec[:, 0], info["min"], atol=1e-3) and np.allclose(rec[:, -1], info["max"], atol=1e-3)


def test_quantise_depth_maps_the_finite_range_and_clips_nan_and_inf() -> None:
    from pipeline.targets.depth import quantise_depth

    rng = np.random.default_rng(5)
    depth = (rng.normal(size=(16, 32)) * 40).astype(np.float32)
    depth[2, 3], depth[4, 7], depth[6, 9] = np.nan, np.inf, -np.inf  # skipped for min/max, clipped to them
    out, info = quantise_depth(depth)
    finite = depth[np.isfinite(depth)]
    lo, hi = float(finite.min()), float(finite.max())
    assert info == {"kind": "relative", "min": lo, "max": hi, "scale": (hi - lo) / 65535}
    clean = np.nan_to_num(depth, nan=lo, posinf=hi, neginf=lo)
    expected = np.clip(np.rint((clean - lo) * np.float32(65535 / (hi - lo))), 0, 65535).astype(np.uint16)
    np.testing.assert_array_equal(out, expected)
    assert out[2, 3] == 0 and out[4, 7] == 65535 and out[6, 9] == 0
    flat, flat_info = quantise_depth(np.full((4, 4), 3.0, np.float32))
    assert (flat == 0).all() and flat_info["min"] == flat_info["max"] == 3.0
    empty, empty_info = quantise_depth(np.full((4, 4), np.nan, np.float32), kind="metric")
    assert (empty == 0).all() and empty_info == {"kind": "metric", "min": 0.0, "max": 0.0, "scale": 0.0}


def test_panoptic_sample_keeps_ids_and_voids_the_border() -> None:
    classes = np.full((20, 40), 131, np.uint8)
    classes[:, 20:] = 0
    out = panoptic_sample({"classes": classes}, _meta(40, 20, 32))["panoptic.png"]
    assert set(np.unique(out[8:24]).tolist()) == {0, 131} and (out[:8] == 255).all()
    with pytest.raises(ValueError, match="uint8"):
        panoptic_sample({"classes": classes.astype(np.int32)}, _meta(40, 20, 32))


def test_text_sample_maps_polygons_and_rasterises() -> None:
    pred = {"polygons": [np.array([[10, 10], [30, 10], [30, 20], [10, 20]], np.float32)], "scores": [0.9]}
    out = text_sample(pred, _meta(40, 20, 80))  # scale 2, offset y 20
    assert out["text.json"] == {"polygons": [[[20.0, 40.0], [60.0, 40.0], [60.0, 60.0], [20.0, 60.0]]],
                                "scores": [0.9]}
    mask = out["text.png"]
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 255}
    # every pixel whose centre is inside is set; OpenCV's fill adds at most a one-pixel rim
    assert (mask[40:60, 20:60] == 255).all() and (mask[:39] == 0).all() and (mask[61:] == 0).all()
    assert (mask[:, :19] == 0).all() and (mask[:, 61:] == 0).all()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 40])
def test_polygons_with_any_number_of_points(n: int) -> None:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    poly = np.stack([32 + 20 * np.cos(t), 32 + 20 * np.sin(t)], axis=1) if n > 2 else \
        np.array([[10.2, 10.7], [40.6, 10.7]][:n])
    mask = rasterise_polygons([poly], 64)
    area = (mask == 255).sum()
    if n >= 3:
        expected = 0.5 * n * 400 * np.sin(2 * np.pi / n)  # area of the regular polygon
        assert abs(area - expected) < 0.1 * expected + 40
    elif n == 2:
        assert 29 <= area <= 33 and (mask[10, 11:40] == 255).all()
    else:
        assert area == 1 and mask[10, 10] == 255


def test_an_image_whose_header_contradicts_its_annotations_is_rejected_undecoded(monkeypatch) -> None:
    import io
    import zlib

    import cv2
    from PIL import Image

    from shards.images import RejectedImage, decode_image_bytes

    def png(width: int, height: int) -> bytes:  # a 1-bit PNG of any size in a few kilobytes
        def chunk(kind: bytes, body: bytes) -> bytes:
            return (len(body).to_bytes(4, "big") + kind + body
                    + zlib.crc32(kind + body).to_bytes(4, "big"))
        rows = zlib.compress((b"\0" + b"\0" * ((width + 7) // 8)) * height, 9)
        ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")

    def no_decode(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    bomb = png(20000, 20000)
    assert len(bomb) < 200_000
    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(RejectedImage) as err:
        decode_image_bytes(bomb, "bomb.jpg", expected_size=(640, 480))
    assert err.value.reason == "size-mismatch" and "20000x20000" in str(err.value)
    buf = io.BytesIO()
    Image.new("RGB", (30000, 20), "red").save(buf, "JPEG")
    with pytest.raises(RejectedImage) as err:  # the Pillow path reads the header only too
        decode_image_bytes(buf.getvalue(), "wide.jpg", expected_size=(640, 480))
    assert err.value.reason == "size-mismatch"
    monkeypatch.undo()
    image, _ = decode_image_bytes(png(48, 64), "small.png", expected_size=(64, 48))  # the transpose is allowed
    assert image.shape == (64, 48, 3)


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_cut_jpeg_given_an_end_marker_is_truncated_not_grey(tmp_path: Path, orientation: int) -> None:
    """libjpeg fills entropy data that ends early with grey and only warns; such a file is rejected, while a
    benign warning (stray bytes before the end marker) still decodes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)).save(buf, "JPEG", quality=90, exif=exif)
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    with pytest.raises(RejectedImage) as err:
        decode_image(tmp_path / "cut.jpg")
    assert err.value.reason == "truncated" and "premature end" in err.value.detail
    (tmp_path / "good.jpg").write_bytes(data)
    (tmp_path / "stray.jpg").write_bytes(data[:-2] + b"\x00\x00\x00" + b"\xff\xd9")
    assert np.array_equal(decode_image(tmp_path / "stray.jpg"), decode_image(tmp_path / "good.jpg"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_the_fast_jpeg_path_is_pillows(orientation: int) -> None:
    from PIL import Image, ImageOps

    from shards.images import decode_image_bytes

    rgb = np.random.default_rng(orientation).integers(0, 255, (40, 64, 3), np.uint8)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif)
    oriented, raw = decode_image_bytes(buf.getvalue())
    pillow = Image.open(io.BytesIO(buf.getvalue()))
    assert np.array_equal(oriented, np.asarray(ImageOps.exif_transpose(pillow).convert("RGB")))
    assert raw is None if orientation == 1 else np.array_equal(raw, np.asarray(pillow.convert("RGB")))
