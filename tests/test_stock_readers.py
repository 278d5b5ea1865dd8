"""The README's recipes for reading an export with stock tools: webdataset with a decoder handler of a few lines,
and plain tarfile + PIL or OpenCV. 16-bit depth must come out exact, as the project's own reader gives it."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shards.export import export_webdataset
from shards.reader import StoreReader
from shards.synthetic import write_synthetic_store

SPLIT = "train2017"


def exact_png(key: str, data: bytes):
    """The README's webdataset handler: PNG members as stored (uint16 stays uint16; 3 channels are RGB)."""
    if not key.endswith("png"):
        return None
    import cv2

    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(a[..., ::-1]) if a.ndim == 3 else a


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("stock")
    write_synthetic_store(root / "store", SPLIT, 6, 4, size=32)
    export_webdataset(root / "store", SPLIT, root / "wds", ["base", "depth", "normals", "groups"])
    expected = {s["__key__"]: s for s in StoreReader(root / "store", SPLIT, ["depth", "normals", "groups"])}
    return root / "wds", expected


def test_stock_webdataset_with_the_readme_handler_reads_16_bit_depth_exactly(export) -> None:
    wds = pytest.importorskip("webdataset")
    out, expected = export
    urls = str(out / json.loads((out / "export.json").read_text())["urls"])
    got = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode(exact_png, "rgb8")}
    assert got.keys() == expected.keys()
    for key, s in got.items():
        assert s["depth.png"].dtype == np.uint16 and s["depth.png"].max() > 255
        for ext in ("depth.png", "normals.png", "groups.png"):
            assert np.array_equal(s[ext], expected[key][ext]), (key, ext)
        assert s["jpg"].shape == (32, 32, 3) and isinstance(s["meta.json"], dict)


def test_plain_tarfile_and_pil_read_16_bit_depth_exactly(export) -> None:
    from PIL import Image

    out, expected = export
    seen = 0
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".depth.png"):
                    key = member.name.split(".", 1)[0]
                    depth = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())))
                    assert depth.dtype == np.uint16 and np.array_equal(depth, expected[key]["depth.png"])
                    seen += 1
    assert seen == len(expected)


def test_ray_data_reads_an_export_with_exact_16_bit_depth(export) -> None:
    pytest.importorskip("pyarrow", reason="ray.data needs the project's [data] extra (pyarrow, pandas)")
    pytest.importorskip("ray")
    import ray.data

    out, expected = export
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        rows = ray.data.read_webdataset(sorted(str(p) for p in out.glob("*.tar"))).take_all()
    finally:
        ray.shutdown()
    got = {row["__key__"]: row for row in rows}
    assert got.keys() == expected.keys()
    for key, row in got.items():
        depth = np.asarray(row["depth.png"])
        assert depth.dtype == np.uint16 and np.array_equal(depth, expected[key]["depth.png"]), key
