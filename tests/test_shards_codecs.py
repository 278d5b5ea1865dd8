"""Member codecs: exact PNG round trips through the vectorised path and the OpenCV fallback, damage detection."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import shards.codecs as codecs
from shards.codecs import CodecError, decode_npy, decode_png, encode_npy, encode_png


def _cv2_decode(data: bytes) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return arr[..., ::-1] if arr.ndim == 3 else arr


@pytest.mark.parametrize("inflate", ["libdeflate", "zlib"])
@pytest.mark.parametrize("encoder", ["isal", "opencv"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 64), (33, 17, 3), (256, 256), (100, 256, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_is_exact(shape, dtype, encoder, inflate, monkeypatch: pytest.MonkeyPatch) -> None:
    if inflate == "zlib":
        monkeypatch.setattr(codecs, "_libdeflate_zlib", None)
    if encoder == "opencv":
        monkeypatch.setattr(codecs, "_isal_compress", None)
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    data = encode_png(a)
    fast = codecs._decode_png_fast(data)
    assert fast is not None  # what encode_png writes always takes the vectorised path
    out = decode_png(data)
    assert out.dtype == dtype and out.shape == shape and out.flags.writeable
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(_cv2_decode(data), a)  # and stays a standard PNG, for two other decoders
    if not (dtype == np.uint16 and len(shape) == 3):  # Pillow reads 16-bit RGB as 8-bit
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), a)


def test_every_uint16_value_round_trips() -> None:
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(decode_png(encode_png(every)), every)
    np.testing.assert_array_equal(decode_png(encode_png(every.T.copy())), every.T)


def test_foreign_pngs_go_through_opencv() -> None:
    rng = np.random.default_rng(0)
    rgb = (np.add.outer(np.arange(40), np.arange(30))[..., None] * [1, 2, 3] % 256).astype(np.uint8)
    rgb[::3] = rng.integers(0, 256, rgb[::3].shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)  # Pillow picks filters per row
    data = buf.getvalue()
    assert codecs._decode_png_fast(data) is None
    np.testing.assert_array_equal(decode_png(data), rgb)
    buf = io.BytesIO()
    palette = Image.fromarray(rgb).convert("P")
    palette.save(buf, format="PNG")  # palette PNG: not ours, still decodes (to RGB)
    np.testing.assert_array_equal(decode_png(buf.getvalue()), np.asarray(palette.convert("RGB")))


def test_encoding_is_deterministic_and_small_for_labels() -> None:
    labels = np.zeros((256, 256), np.uint8)
    labels[100:200, 50:150] = 7
    assert encode_png(labels) == encode_png(labels.copy())
    assert len(encode_png(labels)) < 2000


def test_damaged_png_raises_codec_error() -> None:
    a = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    data = bytearray(encode_png(a))
    with pytest.raises(CodecError):
        decode_png(bytes(data[: len(data) // 2]))
    flipped = bytearray(data)
    flipped[20] ^= 0xFF  # inside IHDR: the width
    with pytest.raises(CodecError, match="IHDR checksum"):
        decode_png(bytes(flipped))
    with pytest.raises(CodecError):
        decode_png(b"not a png at all")


def test_npy_never_unpickles() -> None:
    g = np.linspace(-1, 1, 2400, dtype=np.float16).reshape(8, 300)
    np.testing.assert_array_equal(decode_npy(encode_npy(g)), g)
    with pytest.raises(CodecError):
        encode_npy(np.array([{"a": 1}], dtype=object))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CodecError):
        decode_npy(pickled.getvalue())


def test_npy_header_fast_path_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    arrays = [np.zeros((8, 300), np.float16), rng.normal(size=(3, 4)).astype(">f4"),
              np.asfortranarray(rng.normal(size=(5, 7))), np.array(3.5), np.zeros((0, 3), np.uint8),
              np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])]
    for a in arrays:
        data = encode_npy(a)
        out, ref = decode_npy(data), np.load(io.BytesIO(data))
        assert out.dtype == ref.dtype and out.shape == ref.shape and out.flags.writeable
        assert out.flags.f_contiguous == ref.flags.f_contiguous and out.flags.c_contiguous == ref.flags.c_contiguous
        np.testing.assert_array_equal(out, a)
    out = decode_npy(encode_npy(arrays[0]))
    out[0, 0] = 1  # an own copy: the next decode of the same bytes is unchanged
    assert not decode_npy(encode_npy(arrays[0])).any()
    with pytest.raises(CodecError):
        decode_npy(encode_npy(arrays[1])[:-3])  # truncated data
