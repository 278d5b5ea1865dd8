"""Untrusted inputs that would exhaust memory or hang: decompression bombs among store members and input images,
tar headers declaring huge members, JSON nested without end, and special files where store files belong. Each test
makes the attack and checks that the user got one line, the process stayed small and nothing waited forever."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from shards.cli import main as shards_main
from shards.codecs import CodecError, decode_jpeg, decode_member, decode_npy, encode_jpeg, encode_npy
from shards.layout import column_dir, column_record_path
from shards.manifest import StoreError, StoreFault, load_manifest
from shards.reader import StoreReader
from shards.schema import column
from shards.streams import MAX_MEMBER_BYTES, TarError, iter_samples, iter_tar, read_bytes
from shards.synthetic import write_synthetic_store
from shards.writer import tar_bytes

SPLIT = "train2017"
SIZE = 32


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_synthetic_store(root, SPLIT, 4, 4, size=SIZE)
    return root


def _shard_tar(store: Path, col: str) -> tuple[Path, str]:
    manifest = load_manifest(store / SPLIT)
    shard = manifest.shards[0].name
    return store / SPLIT / col / manifest.columns[col] / f"{shard}.tar", shard


def _replace_member(store: Path, col: str, ext: str, data: bytes) -> str:
    """Put ``data`` as member ``ext`` of the first sample of the first shard of ``col``, with the shard's record in
    ``column.json`` updated as its maker would have written it (so that only decoding can notice). The key."""
    tar, shard = _shard_tar(store, col)
    with open(tar, "rb") as f:
        samples = list(iter_samples(f))
    key = samples[0][0]
    samples[0][1][ext] = data
    _write_tar(store, col, tar, shard, tar_bytes(samples)[0])
    return key


def _write_tar(store: Path, col: str, tar: Path, shard: str, data: bytes) -> None:
    import hashlib

    tar.write_bytes(data)
    manifest = load_manifest(store / SPLIT)
    record = column_record_path(column_dir(store / SPLIT, col, manifest.columns[col]))
    doc = json.loads(record.read_text())
    doc["shards"][shard].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    record.write_text(json.dumps(doc))


def _png_bomb(side: int, sixteen_bits: bool = True) -> bytes:
    """A valid gray PNG of ``side`` x ``side`` zeros, deflated in chunks: a few hundred KB for gigabytes of pixels."""
    depth = 16 if sixteen_bits else 8
    row = bytes(1 + side * depth // 8)
    z = zlib.compressobj(9)
    rows_per_chunk = max(1, (4 << 20) // len(row))
    parts = []
    for start in range(0, side, rows_per_chunk):
        parts.append(z.compress(row * min(rows_per_chunk, side - start)))
    parts.append(z.flush())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = struct.pack(">IIBBBBB", side, side, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# Run in a child process so that its peak memory is its own: every store tool on the store given, then its peak RSS.
_TOOLS = r"""
import contextlib, io, json, resource, sys
from shards.cli import main
from shards.manifest import StoreError
from shards.reader import StoreReader
root, split, col = sys.argv[1:4]
out = {}
try:
    n = sum(1 for _ in StoreReader(root, split, [col]))
    out["reader"] = f"read {n} samples"
except StoreError as e:
    out["reader"] = str(e)
for name, argv in (("verify", ["verify", "--shards", root, "--split", split, "--columns", col]),
                   ("show", ["show", "--shards", root, "--split", split, "--out", sys.argv[4]])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    out[name] = [rc, err.getvalue()]
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _tools(store: Path, col: str, tmp_path: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", _TOOLS, str(store), SPLIT, col, str(tmp_path / "sheet.png")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _one_line(text: str) -> str:
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    return text.strip()


def test_a_png_bomb_in_a_store_is_refused_before_it_is_inflated(store: Path, tmp_path: Path) -> None:
    bomb = _png_bomb(16384)  # 512 MiB of uint16 pixels (plus 512 MiB of inflated rows) in about half a megabyte
    assert len(bomb) < 1 << 20
    clean = _tools(store, "depth", tmp_path)
    assert clean["reader"] == "read 4 samples" and clean["verify"][0] == 0 and clean["show"][0] == 0, clean
    key = _replace_member(store, "depth", "depth.png", bomb)
    got = _tools(store, "depth", tmp_path)
    assert "declares 16384x16384 pixels" in got["reader"] and key in got["reader"], got
    for tool in ("verify", "show"):
        rc, err = got[tool]
        assert rc == 1 and "16384x16384" in (_one_line(err) if tool == "show" else err), (tool, got)
    # whatever the tools import, the bomb added nothing like the 1 GiB its decoding needs
    assert got["peak_mb"] < clean["peak_mb"] + 100, (clean["peak_mb"], got["peak_mb"])


def test_image_members_must_have_the_stores_size(store: Path) -> None:
    other = encode_jpeg(np.zeros((SIZE, 2 * SIZE, 3), np.uint8))  # decodes fine, but not S x S
    key = _replace_member(store, "base", "jpg", other)
    with pytest.raises(StoreFault, match=f"key {key} member jpg: image header declares 64x32 pixels, the store's "
                                         "members are 32x32"):
        list(StoreReader(store, SPLIT, ["base"]))


def test_decoders_refuse_foreign_formats_and_lying_headers() -> None:
    member = column("depth").member("depth.png")
    import cv2

    ok, tiff = cv2.imencode(".tiff", np.zeros((8, 8), np.uint16))  # OpenCV would decode it as a depth map
    with pytest.raises(CodecError, match="not PNG data"):
        decode_member(member, tiff.tobytes(), SIZE)
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 4096, 4097, 16, 0, 0, 0, 0)
    header_only = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
    with pytest.raises(CodecError, match="declares 4096x4097 pixels, more than"):
        decode_member(member, header_only)  # no store size given: bounded by the largest store's
    jpeg = bytearray(encode_jpeg(np.zeros((16, 16, 3), np.uint8)))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    with pytest.raises(CodecError, match="declares 30000x30000 pixels"):
        decode_jpeg(bytes(jpeg))
    npy = bytearray(encode_npy(np.zeros((8, 300), np.float16)))
    header = bytes(npy[:npy.index(b"\n") + 1])
    lying = header.replace(b"'shape': (8, 300)", b"'shape': (9, 300)")
    assert lying != header
    with pytest.raises(CodecError, match="declares"):
        decode_npy(lying + bytes(npy[len(header):]))
    for junk in (b"", b"not an npy file", b"\x93NUMPY\x02\x00" + bytes(8)):  # no header, another version
        with pytest.raises(CodecError, match="corrupt npy"):
            decode_npy(junk)
    buf = io.BytesIO()  # a version-2 header of a plain array still loads, through numpy's parser
    np.lib.format.write_array(buf, np.arange(6, dtype=np.int16).reshape(2, 3), version=(2, 0))
    assert decode_npy(buf.getvalue()).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_tar_header_declaring_gigabytes_is_one_line(store: Path, capsys: pytest.CaptureFixture) -> None:
    tar, shard = _shard_tar(store, "caption")
    data = bytearray(tar.read_bytes())
    data[124:136] = b"77777777777\0"  # the first member says it holds 8 GiB
    data[148:156] = b"        "
    data[148:155] = f"{sum(data[:512]):06o}\0".encode()  # with a good checksum
    _write_tar(store, "caption", tar, shard, bytes(data))
    with pytest.raises(TarError, match="declares 8589934591 bytes"):
        list(iter_tar(io.BytesIO(bytes(data))))
    with pytest.raises(StoreFault, match=f"{shard}.*declares 8589934591 bytes"):
        list(StoreReader(store, SPLIT, ["caption"]))
    assert shards_main(["verify", "--shards", str(store), "--split", SPLIT]) == 1
    assert "declares 8589934591 bytes" in capsys.readouterr().err
    assert MAX_MEMBER_BYTES < 8589934591


def test_json_nested_without_end_is_one_line_everywhere(store: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    key = _replace_member(store, "base", "meta.json", deep)
    with pytest.raises(StoreFault, match=f"key {key} member meta.json: corrupt JSON: JSON nested too deeply"):
        list(StoreReader(store, SPLIT, ["base"]))
    for argv in (["verify"], ["show", key, "--out", str(tmp_path / "sheet.png")]):
        rc = shards_main([*argv, "--shards", str(store), "--split", SPLIT])
        err = capsys.readouterr().err
        assert rc == 1 and "nested too deeply" in err and "Traceback" not in err, (argv, rc, err)
        if argv[0] != "verify":
            _one_line(err)
    # export copies members as bytes, never parsing them: the member arrives as it was, for `verify` to judge
    assert shards_main(["export", "--out", str(tmp_path / "export"), "--shards", str(store), "--split", SPLIT,
                        "--columns", "base"]) == 0
    exported = next(p for p in (tmp_path / "export").iterdir() if p.suffix == ".tar")
    with open(exported, "rb") as f:
        assert dict(iter_samples(f))[key]["meta.json"] == deep
    manifest = store / SPLIT / "manifest.json"
    manifest.write_bytes(deep)
    rc = shards_main(["info", "--shards", str(store), "--split", SPLIT])
    assert rc == 1 and "nested too deeply" in _one_line(capsys.readouterr().err)
    with pytest.raises(StoreError, match="nested too deeply"):
        StoreReader(store, SPLIT)


class _Hung(Exception):
    pass


@pytest.fixture()
def alarm():
    """Fail a test that would wait forever (a FIFO opened for reading waits for a writer) instead of hanging."""
    def ring(*_):
        raise _Hung("the tool waited on a special file")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("where", ["manifest", "column.json", "shard"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_files_in_a_store_are_refused_not_read(store: Path, where: str, kind: str, alarm,
                                                       capsys: pytest.CaptureFixture) -> None:
    manifest = load_manifest(store / SPLIT)
    path = {"manifest": store / SPLIT / "manifest.json",
            "column.json": column_record_path(column_dir(store / SPLIT, "depth", manifest.columns["depth"])),
            "shard": _shard_tar(store, "depth")[0]}[where]
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    with pytest.raises(StoreError, match="not a regular file"):
        list(StoreReader(store, SPLIT, ["depth"]))
    rc = shards_main(["verify", "--shards", str(store), "--split", SPLIT, "--columns", "depth"])
    err = capsys.readouterr().err
    assert rc == 1 and "not a regular file" in err and "Traceback" not in err, err


def test_small_files_are_read_only_up_to_their_cap(tmp_path: Path) -> None:
    big = tmp_path / "manifest.json"
    big.write_bytes(b" " * 2048)
    assert len(read_bytes(str(big), limit=4096)) == 2048
    with pytest.raises(ValueError, match="more than 1024 bytes"):
        read_bytes(str(big), limit=1024)
    with pytest.raises(ValueError, match="more than 1024 bytes"):  # a stream without end is cut off, not drained
        read_bytes("pipe:yes", limit=1024)


def test_an_input_image_above_the_pixel_limit_is_rejected_undecoded(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from pipeline.coco import ImageRecord
    from pipeline.samples import base_sample
    from shards.images import MAX_IMAGE_PIXELS, RejectedImage

    images = tmp_path / "train2017"
    images.mkdir()
    bomb = _png_bomb(16384, sixteen_bits=False)  # 268 Mpx (768 MiB as RGB) in a few hundred KB
    (images / "000000000001.png").write_bytes(bomb)
    record = ImageRecord(image_id=1, file_name="000000000001.png", path=str(images / "000000000001.png"),
                         width=16384, height=16384)  # the annotations agree with the header

    def no_decode(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(RejectedImage) as err:
        base_sample(record, SIZE)
    assert err.value.reason == "too-large" and f"more than {MAX_IMAGE_PIXELS} pixels" in str(err.value)
    monkeypatch.undo()
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 30, 3), np.uint8))
    record = ImageRecord(image_id=2, file_name="small.png", path=str(small), width=30, height=20)
    assert base_sample(record, SIZE, max_pixels=600)[1].shape == (20, 30, 3)
    with pytest.raises(RejectedImage, match="more than 599 pixels"):
        base_sample(record, SIZE, max_pixels=599)
