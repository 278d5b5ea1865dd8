"""Untrusted inputs: each test builds an attack and checks that nothing ran, nothing outside the folder was touched
and the user got one line."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from shards.manifest import StoreError, load_manifest
from shards.reader import StoreReader
from shards.streams import TarError, iter_samples, join
from shards.synthetic import write_synthetic_store
from student import cli

SPLIT = "train2017"


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_synthetic_store(root, SPLIT, 4, 4, size=32)
    return root


@pytest.mark.parametrize("field", ["shard", "fingerprint"])
def test_names_from_a_manifest_never_reach_a_shell(store: Path, tmp_path: Path, field: str) -> None:
    marker = tmp_path / "ran"
    manifest = store / SPLIT / "manifest.json"
    doc = json.loads(manifest.read_text())
    evil = f"x;touch {marker};#"
    if field == "shard":
        doc["shards"][0]["name"] = evil
    else:
        doc["columns"]["depth"] = evil
    manifest.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="manifest"):
        load_manifest(store / SPLIT)
    with pytest.raises(StoreError):
        StoreReader(f"pipe:cat {store}/{{}}", SPLIT)
    assert not marker.exists()


def test_pipe_templates_quote_the_path() -> None:
    assert join("pipe:cat /s/{}", "a b", "c;d") == "pipe:cat /s/'a b/c;d'"
    assert join("pipe:cat /s", "train2017", "manifest.json") == "pipe:cat /s/train2017/manifest.json"
    assert join("pipe:cat /s", "x;y") == "pipe:cat /s/'x;y'"


def _tar(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    return buf.getvalue()


@pytest.mark.parametrize("name", ["../../etc/000000000001.json", "/tmp/000000000001.json", "0000.0000.json",
                                  "x/000000000001.json", "00000000001.json"])
def test_member_keys_must_be_twelve_digits(name: str) -> None:
    assert list(iter_samples(io.BytesIO(_tar(["000000000001.json"])))) == [("000000000001", {"json": b"{}"})]
    with pytest.raises(TarError, match="not 12 digits"):
        list(iter_samples(io.BytesIO(_tar([name]))))


def test_a_checkpoint_never_chooses_a_pipe_root(store: Path, tmp_path: Path, capsys) -> None:
    from student.checkpoint import save_checkpoint
    from student.config import ModelConfig, TrainConfig
    from student.model import YMapNet

    marker = tmp_path / "ran"
    cfg = ModelConfig.tiny(32)
    evil = TrainConfig(shards=f"pipe:touch {marker}; cat {store}/{{}}", model="tiny").to_dict()
    ckpt = tmp_path / "run" / "last.pt"
    ckpt.parent.mkdir()
    torch.manual_seed(0)
    save_checkpoint(ckpt, YMapNet(cfg), cfg, optimizer={"state": {}, "param_groups": []}, train_cfg=evil, epoch=0,
                    step=0, position={"epoch": 0, "batch": 0}, best=1.0, stale=0, metrics={})
    assert cli.main(["train", "--resume", str(ckpt), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --shards" in err, err
    assert not marker.exists()


def test_checkpoint_sizes_are_checked_against_its_tensors_before_building(tmp_path: Path) -> None:
    from student.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from student.config import ModelConfig
    from student.model import YMapNet

    cfg = ModelConfig.tiny(32)
    path = tmp_path / "huge.pt"
    save_checkpoint(path, YMapNet(cfg), cfg)
    payload = torch.load(path, weights_only=True)
    payload["model_cfg"]["token_width"] = 200_000  # 160 GB of token layers, from a file of a few MB
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="token_width"):
        load_checkpoint(path)


def test_sizes_within_bounds_must_still_fit_the_weights(tmp_path: Path) -> None:
    from student.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from student.config import ModelConfig
    from student.model import YMapNet

    cfg = ModelConfig.tiny(32)
    path = tmp_path / "wide.pt"
    save_checkpoint(path, YMapNet(cfg), cfg)
    payload = torch.load(path, weights_only=True)
    payload["model_cfg"]["token_width"] = 60_000  # allowed alone, but 8 x 2 such layers are 230 GB of float32
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"tokens.0.body.0.weight: the config asks for \[60000, 256\]"):
        load_checkpoint(path)


def test_every_hugging_face_load_refuses_remote_code() -> None:
    import ast

    root = Path(__file__).resolve().parents[1]
    calls = []
    for path in sorted((root / "teachers").glob("*.py")) + sorted((root / "pipeline").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                kw = {k.arg: k.value for k in node.keywords}
                calls.append((path.name, node.lineno))
                assert isinstance(kw.get("trust_remote_code"), ast.Constant) and \
                    kw["trust_remote_code"].value is False, f"{path.name}:{node.lineno}"
    assert len(calls) >= 4


def _photo(path: Path) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(path), np.full((20, 30, 3), 128, np.uint8))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "fifo"])
def test_coco_image_paths_never_leave_the_image_folder(tmp_path: Path, kind: str) -> None:
    import os

    from pipeline.coco import ImageRecord
    from pipeline.samples import base_sample
    from shards.images import RejectedImage

    images = tmp_path / "coco" / "train2017"
    images.mkdir(parents=True)
    private = tmp_path / "private.jpg"  # a photo outside the COCO root
    _photo(private)
    _photo(images / "000000000001.jpg")
    name = {"dotdot": "../../private.jpg", "absolute": str(private), "symlink": "000000000002.jpg",
            "fifo": "000000000003.jpg"}[kind]
    if kind == "symlink":
        os.symlink(private, images / name)
    elif kind == "fifo":
        os.mkfifo(images / name)  # reading it would block forever
    record = ImageRecord(image_id=2, file_name=name, path=str(images / name), width=30, height=20)
    with pytest.raises(RejectedImage) as e:
        base_sample(record, 32)
    assert e.value.reason == ("outside-folder" if kind in ("dotdot", "absolute") else "not-a-file")
    fine = ImageRecord(image_id=1, file_name="000000000001.jpg", path=str(images / "000000000001.jpg"), width=30,
                       height=20)
    assert base_sample(fine, 32)[1].shape == (20, 30, 3)


def test_gc_removes_nothing_reached_through_a_symlink(tmp_path: Path) -> None:
    import os
    import shutil

    from shards.gc import collect_garbage

    mine, other = tmp_path / "mine", tmp_path / "other"
    write_synthetic_store(mine, SPLIT, 4, 4, size=32)
    write_synthetic_store(other, SPLIT, 4, 4, size=32, seed=1)
    manifest = load_manifest(mine / SPLIT)
    # a symlinked column folder whose inactive version is another store's active one
    depth = mine / SPLIT / "depth"
    shutil.rmtree(depth)
    os.symlink(other / SPLIT / "depth", depth)
    other_fp = load_manifest(other / SPLIT).columns["depth"]
    (other / SPLIT / "depth" / (manifest.columns["depth"])).mkdir(exist_ok=True)
    # a symlinked active version folder holding a temporary file of another place
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".x.tmp").write_text("keep me")
    normals = mine / SPLIT / "normals" / manifest.columns["normals"]
    shutil.rmtree(normals)
    os.symlink(outside, normals)
    collect_garbage(mine, SPLIT)
    assert (other / SPLIT / "depth" / other_fp).is_dir()
    assert (outside / ".x.tmp").read_text() == "keep me"


def test_predict_reads_no_vocabulary_a_checkpoint_names(store: Path, tmp_path: Path, capsys) -> None:
    """A checkpoint says which store it was trained on; predict suggests it, it does not read it."""
    import json

    import numpy as np
    from PIL import Image

    from student.checkpoint import save_checkpoint
    from student.config import ModelConfig, TrainConfig
    from student.model import YMapNet

    cfg = ModelConfig.tiny(32)
    assert (store / SPLIT / "vocab.json").is_file()  # what older versions read, named by the checkpoint
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    torch.manual_seed(0)
    for shards in (str(store), str(store) + "\x1b]0;owned\x07"):
        ckpt = tmp_path / "named.pt"
        save_checkpoint(ckpt, YMapNet(cfg), cfg, train_cfg=TrainConfig(shards=shards, model="tiny").to_dict())
        assert cli.main(["predict", "--checkpoint", str(ckpt), str(image), "--out", str(out), "--json",
                         "--no-panel"]) == 0
        err = capsys.readouterr().err
        assert "no vocabulary given" in err and "pass --shards" in err and str(store) in err
        assert "\x1b" not in err and "\x07" not in err  # shown escaped: a checkpoint's string drives no terminal
        assert json.loads((out / "a.json").read_text())["words"] is None  # the file it names was not read
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(image), "--out", str(out), "--json", "--no-panel",
                     "--shards", str(store)]) == 0  # the user's flag: its words decoded
    assert isinstance(json.loads((out / "a.json").read_text())["words"], list)
