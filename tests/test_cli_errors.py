"""What a user sees when a command goes wrong: one line on stderr naming the thing and the fix, exit code 2
for bad input (usage) and 1 for a fault, never a traceback; plus the contact sheet's readability fixes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main as pipeline_main
from shards.cli import main as shards_main
from shards.codecs import decode_jpeg
from shards.manifest import ShardEntry, load_manifest, update_manifest
from shards.reader import StoreReader
from shards.show import contact_sheet, normalize_key
from shards.writer import ColumnWriter
from shards.synthetic import write_synthetic_store
from student.cli import main as student_main

SIZE = 64
SPLIT = "val2017"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_synthetic_store(root, SPLIT, num_samples=5, shard_size=3, size=SIZE, seed=11)
    return root


@pytest.fixture(scope="module")
def empty(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store with every image rejected: each column's shards rewritten empty, counts 0, 5 rejected."""
    root = tmp_path_factory.mktemp("empty")
    shutil.copytree(store / SPLIT, root / SPLIT)
    manifest = load_manifest(root / SPLIT)
    for column, fp in manifest.columns.items():
        for name in manifest.shard_names:
            ColumnWriter(root / SPLIT, column, fp).write_shard(name, [])
    update_manifest(root / SPLIT, shards=[ShardEntry(e.name, 0) for e in manifest.shards], rejected=5)
    return root


def _one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# ---- pipeline ----------------------------------------------------------------------------------------------


def test_pipeline_usage_error_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert pipeline_main(["build-targets", "--depth-param", "bad"]) == 2
    err = _one_line(capsys)
    assert "--depth-param: expected KEY=VALUE, got 'bad'" in err and "pipeline build-targets --help" in err


def test_pipeline_teachers_unknown_task(capsys: pytest.CaptureFixture) -> None:
    assert pipeline_main(["teachers", "--task", "nosuch"]) == 2
    assert _one_line(capsys) == ("pipeline: error: unknown task 'nosuch' (--task); "
                                 "tasks are: pose, depth, panoptic, text, caption")


def test_pipeline_status_of_a_split_never_built(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = pipeline_main(["status", "--out", str(tmp_path), "--split", "nosplit",
                        "--config", str(_config(tmp_path, coco_root=str(tmp_path / "no-coco")))])
    assert rc == 2
    err = _one_line(capsys)
    assert "split 'nosplit' is not built in store" in err and "pass --coco-root" in err


def test_pipeline_config_with_an_unknown_key_lists_the_settings(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert pipeline_main(["build-targets", "--config", str(_config(tmp_path, bogus=1))]) == 2
    err = _one_line(capsys)
    assert "unknown setting(s) bogus in" in err and "coco_root" in err and "depth_teacher" in err


def test_pipeline_store_under_a_file_fails_before_any_work(demo_root: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    rc = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(demo_root), "--split", SPLIT,
                        "--out", str(tmp_path / "afile" / "store")])
    assert rc == 2
    err = _one_line(capsys)
    assert "cannot write the store at" in err and "is a file, not a folder" in err and "pass --out" in err


def test_pipeline_missing_image_folder(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(demo_root / "annotations", coco / "annotations")  # no val2017/ image folder
    rc = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(coco), "--split", SPLIT,
                        "--out", str(tmp_path / "store")])
    assert rc == 2
    assert _one_line(capsys) == (f"pipeline: error: image folder {coco.resolve() / SPLIT} does not exist; "
                                 f"unzip COCO's {SPLIT}.zip into {coco.resolve()}")
    assert not (tmp_path / "store").exists()  # the writability probe creates nothing


def test_pipeline_missing_annotation_names_the_zip(demo_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(demo_root, coco)
    (coco / "annotations" / f"person_keypoints_{SPLIT}.json").unlink()
    rc = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(coco), "--split", SPLIT,
                        "--out", str(tmp_path / "store")])
    assert rc == 2
    err = _one_line(capsys)
    assert f"person_keypoints_{SPLIT}.json" in err and "annotations_trainval2017.zip" in err


def test_pipeline_local_cuda_without_a_gpu(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = pipeline_main(["build-targets", "--executor", "local", "--device", "cuda", "--coco-root", str(demo_root),
                        "--split", SPLIT, "--out", str(tmp_path / "store")])
    assert rc == 2
    assert _one_line(capsys) == ("pipeline: error: --device cuda: no CUDA GPU is visible on this machine; use "
                                 "--device cpu (or auto), or --executor ray on a cluster with GPUs")


def test_pipeline_gpu_share_that_cannot_be_placed(demo_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    base = ["build-targets", "--coco-root", str(demo_root), "--split", SPLIT, "--out", str(tmp_path / "store")]
    assert pipeline_main([*base, "--gpus-per-teacher", "1.5"]) == 2
    assert _one_line(capsys) == ("pipeline: error: --gpus-per-teacher 1.5: use a fraction up to 1 or a whole "
                                 "number of GPUs")
    assert pipeline_main([*base, "--executor", "ray", "--gpus-per-teacher", "0", "--device", "cuda"]) == 2
    assert _one_line(capsys) == ("pipeline: error: --device cuda with --gpus-per-teacher 0: teacher actors that "
                                 "reserve no GPU run on CPU; give them a GPU share or use --device cpu (or auto)")
    assert pipeline_main([*base, "--executor", "ray", "--device", "cuda:1"]) == 2
    assert "--device cuda:1: on Ray each teacher actor sees only the GPU it reserved" in _one_line(capsys)
    pytest.importorskip("ray")  # a local cluster of this machine, which has no GPU: Ray would wait forever
    assert pipeline_main([*base, "--executor", "ray", "--num-cpus", "1", "--gpus-per-teacher", "0.5",
                          "--stages", "depth"]) == 2
    assert _one_line(capsys).startswith("pipeline: error: 1 GPU teacher actor(s) x 0.5 GPU do not fit the Ray "
                                        "cluster's GPUs (0 on 1 node(s)): 0 fit at once; use --gpus-per-teacher 0")
    assert not (tmp_path / "store").exists()


def test_pipeline_unreachable_ray_address(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rc = pipeline_main(["build-targets", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
                        "--coco-root", str(demo_root), "--split", SPLIT, "--out", str(tmp_path / "store")])
    assert rc == 2
    assert _one_line(capsys).startswith(f"pipeline: error: cannot reach the Ray cluster at 127.0.0.1:{port} (")
    assert pipeline_main(["build-targets", "--executor", "ray", "--ray-address", "head-node", "--coco-root",
                          str(demo_root), "--split", SPLIT, "--out", str(tmp_path / "store")]) == 2
    assert "is not host:port, ray://host:port or auto" in _one_line(capsys)


@pytest.mark.parametrize("exc, code, text", [
    (KeyboardInterrupt(), 130, "pipeline: interrupted; finished units are kept: run the same command again"),
    (OSError(errno.ENOSPC, "No space left on device", "/store/x.tar"), 1,
     "pipeline: error: /store/x.tar: No space left on device"),
])
def test_pipeline_interrupt_and_disk_fault(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture, exc: BaseException, code: int,
                                           text: str) -> None:
    import pipeline.build

    def build_targets(config: object) -> None:
        raise exc

    monkeypatch.setattr(pipeline.build, "build_targets", build_targets)
    rc = pipeline_main(["build-targets", "--coco-root", str(demo_root), "--out", str(tmp_path / "s")])
    assert rc == code
    assert _one_line(capsys).startswith(text)


def _config(tmp_path: Path, **values: object) -> Path:
    path = tmp_path / "build.json"
    path.write_text(json.dumps(values))
    return path


# ---- shards ------------------------------------------------------------------------------------------------


def test_shards_flags_may_follow_the_command(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert shards_main(["verify", "--shards", str(store), "--split", SPLIT, "--no-decode"]) == 0
    assert capsys.readouterr().out.startswith("OK: 2 shards x 9 columns")


def test_shards_verify_unknown_column_is_a_usage_error(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert shards_main(["--shards", str(store), "--split", SPLIT, "verify", "--columns", "nosuch", "base"]) == 2
    err = _one_line(capsys)
    assert "column(s) nosuch not active in" in err and "active columns: base" in err


def test_shards_show_write_fault_is_one_line(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    assert shards_main(["--shards", str(store), "--split", SPLIT, "show", "--out",
                        str(tmp_path / "afile" / "sheet.png")]) == 2  # an --out that cannot be one: usage
    assert _one_line(capsys) == (f"shards: error: cannot write --out {tmp_path / 'afile' / 'sheet.png'}: "
                                 f"{tmp_path / 'afile'} is a file, not a folder")


def test_shards_show_takes_a_file_name_and_writes_jpeg(store: Path, tmp_path: Path) -> None:
    first = next(iter(StoreReader(store, SPLIT, ["base"], decode=False).read_shard(f"{SPLIT}-000000")))["__key__"]
    out = tmp_path / "sheet.jpg"
    assert shards_main(["--shards", str(store), "--split", SPLIT, "show", f"{first}.jpg", "--out", str(out)]) == 0
    assert out.read_bytes()[:2] == b"\xff\xd8"
    assert decode_jpeg(out.read_bytes()).shape[1] == 3 * 256
    assert normalize_key("000000397133.depth.png") == "000000397133"
    with pytest.raises(ValueError, match="not a COCO image id"):
        normalize_key("abc.jpg")


def test_contact_sheet_masks_letterbox_padding_and_backs_legends() -> None:
    person = (220, 20, 60)  # the taxonomy colour of class 0, person
    sample = {"__key__": "000000000001", "__shard__": f"{SPLIT}-000000",
              "jpg": np.full((SIZE, SIZE, 3), 90, np.uint8),
              "normals.png": np.full((SIZE, SIZE, 3), 200, np.uint8),
              "depth.png": np.full((SIZE, SIZE), 40000, np.uint16),
              "panoptic.png": np.zeros((SIZE, SIZE), np.uint8),
              "meta.json": {"offset": [0, 16], "resized": [SIZE, 32], "size": SIZE}}
    sheet = contact_sheet(sample)
    normals, depth, panoptic = sheet[:256, 512:768], sheet[:256, 256:512], sheet[256:512, :256]
    assert (normals[25:60] == 0).all() and (normals[70:185] == 200).all() and (normals[200:] == 0).all()
    assert (depth[25:60] == 0).all() and (depth[70:185] > 0).any(axis=-1).all() and (depth[200:] == 0).all()
    assert tuple(panoptic[100, 100]) == person
    assert tuple(panoptic[240, 1]) == tuple(int(c * 0.3) for c in person)  # the legend's dark box


# ---- student -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, text", [
    ("bogus", "student eval: error: unknown device 'bogus' (--device); use cpu, cuda, cuda:N, mps or auto"),
    ("cuda:99", "student eval: error: --device cuda:99: "),
])
def test_student_bad_device(store: Path, tiny_checkpoint: str, capsys: pytest.CaptureFixture, device: str,
                            text: str) -> None:
    rc = student_main(["eval", "--checkpoint", tiny_checkpoint, "--shards", str(store), "--device", device])
    assert rc == 2
    assert _one_line(capsys).startswith(text)


@pytest.mark.parametrize("flag, value, text", [
    ("--batch-size", "0", "student train: error: --batch-size must be >= 1, got 0"),
    ("--epochs", "0", "student train: error: --epochs must be >= 1, got 0"),
    ("--lr", "-1", "student train: error: --lr must be a finite number > 0, got -1.0"),
])
def test_student_train_rejects_impossible_numbers(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  flag: str, value: str, text: str) -> None:
    rc = student_main(["train", "--shards", str(store), "--model", "tiny", "--device", "cpu", "--out",
                       str(tmp_path / "run"), flag, value])
    assert rc == 2
    assert _one_line(capsys) == text
    assert not (tmp_path / "run").exists()


def test_student_eval_rejects_batch_size_zero(store: Path, tiny_checkpoint: str, capsys: pytest.CaptureFixture) -> None:
    rc = student_main(["eval", "--checkpoint", tiny_checkpoint, "--shards", str(store), "--split", SPLIT,
                       "--batch-size", "0", "--no-progress"])
    assert rc == 2
    assert _one_line(capsys) == "student eval: error: --batch-size must be >= 1, got 0"


def test_student_eval_json_write_fault(store: Path, tiny_checkpoint: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    rc = student_main(["eval", "--checkpoint", tiny_checkpoint, "--shards", str(store), "--split", SPLIT,
                       "--limit", "2", "--json", str(tmp_path / "afile" / "eval.json"), "--no-progress"])
    assert rc == 1
    assert _one_line(capsys).startswith(f"student eval: error: cannot write --json {tmp_path / 'afile'}")


def test_student_export_opset_out_of_range_and_write_fault(tiny_checkpoint: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert student_main(["export", "--checkpoint", tiny_checkpoint, "--onnx", str(tmp_path / "m.onnx"),
                         "--opset", "99"]) == 2
    assert _one_line(capsys).startswith("student export: error: --opset 99 is outside what this torch exports")
    (tmp_path / "afile").write_text("x")
    assert student_main(["export", "--checkpoint", tiny_checkpoint, "--onnx",
                         str(tmp_path / "afile" / "m.onnx"), "--check-batch", "0"]) == 1
    assert _one_line(capsys).startswith("student export: error:")


def test_a_split_without_samples_is_named_not_hung(empty: Path, tiny_checkpoint: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert shards_main(["--shards", str(empty), "--split", SPLIT, "show"]) == 2
    assert _one_line(capsys) == (f"shards: error: split '{SPLIT}' of store {empty} has no samples "
                                 "(5 images rejected: see its rejected.jsonl)")
    assert student_main(["eval", "--checkpoint", tiny_checkpoint, "--shards", str(empty), "--split", SPLIT,
                         "--no-progress"]) == 2
    assert _one_line(capsys) == (f"student eval: error: split '{SPLIT}' of store {empty} has no samples "
                                 "(5 images rejected: see its rejected.jsonl)")
    assert student_main(["train", "--shards", str(empty), "--train-split", SPLIT, "--val-split", SPLIT,
                         "--model", "tiny", "--device", "cpu", "--workers", "0", "--no-progress",
                         "--out", str(tmp_path / "run")]) == 2
    assert _one_line(capsys) == (f"student train: error: split '{SPLIT}' of store {empty} has no samples "
                                 f"(5 images rejected: see {empty / SPLIT / 'rejected.jsonl'})")


@pytest.mark.parametrize("command", ["eval", "export", "train"])
def test_student_file_that_is_not_a_checkpoint_is_one_line(store: Path, tmp_path: Path, command: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a checkpoint\n")
    argv = {"eval": ["eval", "--checkpoint", str(bogus), "--shards", str(store), "--split", SPLIT],
            "export": ["export", "--checkpoint", str(bogus), "--onnx", str(tmp_path / "m.onnx")],
            "train": ["train", "--shards", str(store), "--resume", str(bogus), "--out", str(tmp_path / "run")]}
    assert student_main(argv[command]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "notes.pt: cannot load checkpoint" in err and "UnpicklingError" in err


def test_student_predict_bad_tile_and_store_without_vocab(tiny_checkpoint: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(np.zeros(8, np.uint8).tobytes())  # never read: the flags fail first
    assert student_main(["predict", "--checkpoint", tiny_checkpoint, str(image), "--tile", "0"]) == 2
    assert _one_line(capsys) == "student predict: error: --tile must be >= 16, got 0"
    assert student_main(["predict", "--checkpoint", tiny_checkpoint, str(image), "--shards",
                         str(tmp_path / "nosuch"), "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys)
    assert line.startswith("student predict: error: --shards ") and "pass --vocab vocab.json" in line


@pytest.mark.parametrize("flags, message", [
    (["--retries", "-1"], "--retries must be >= 0, got -1"),
    (["--actors-per-teacher", "0"], "--actors-per-teacher must be >= 1, got 0"),
    (["--num-cpus", "0"], "--num-cpus must be >= 1, got 0"),  # a Ray cluster without CPUs waits forever
    (["--max-inflight-shards", "0"], "--max-inflight-shards must be >= 1, got 0"),
    (["--cpus-per-teacher", "-1"], "--cpus-per-teacher must be a finite number >= 0, got -1.0"),
    (["--normals-scale", "nan"], "--normals-scale must be a finite number > 0, got nan"),
])
def test_pipeline_impossible_numbers_fail_before_any_work(demo_root: Path, tmp_path: Path, flags: list[str],
                                                          message: str, capsys: pytest.CaptureFixture) -> None:
    rc = pipeline_main(["build-targets", "--coco-root", str(demo_root), "--split", SPLIT,
                        "--out", str(tmp_path / "store"), *flags])
    assert rc == 2
    assert _one_line(capsys) == f"pipeline: error: {message}"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("doc, message", [
    ({"size": "big"}, "setting size in {path} must be int, got 'big'"),
    ({"depth_params": "input_size=518"}, "setting depth_params in {path} must be a mapping[str, Any], "
                                         "got 'input_size=518'"),
    ({"stages": [1]}, "setting stages in {path} must be tuple[str, ...], got (1,)"),
    ({"progress": 1}, "setting progress in {path} must be bool, got 1"),
    ([1, 2], "config file '{path}' holds a list, not an object of settings"),
])
def test_pipeline_config_values_of_the_wrong_type(tmp_path: Path, doc, message: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "build.json"
    path.write_text(json.dumps(doc))
    assert pipeline_main(["build-targets", "--config", str(path)]) == 2
    assert _one_line(capsys) == "pipeline: error: " + message.format(path=path)


def test_pipeline_bad_parameter_value_is_not_called_unknown(demo_root: Path, tmp_path: Path, fakes,
                                                            capsys: pytest.CaptureFixture) -> None:
    rc = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(demo_root), "--split", SPLIT,
                        "--out", str(tmp_path / "store"), "--depth-param", "input_size=abc", "--device", "cpu",
                        "--stages", "depth"])
    assert rc == 2
    err = _one_line(capsys)  # depth-anything-v2 checks input_size before it loads anything
    assert "input_size must be an integer >= 14, got 'abc'" in err and "does not take" not in err
    rc = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(demo_root), "--split", SPLIT,
                        "--out", str(tmp_path / "store"), "--depth-teacher", "fake-depth", "--depth-param",
                        "nosuch=1", "--device", "cpu", "--stages", "depth"])
    assert rc == 2
    assert "does not take these parameters ['nosuch']" in _one_line(capsys)


def test_pipeline_checkpoint_flags_given_twice_or_with_a_tilde(demo_root: Path, tmp_path: Path, fakes,
                                                               capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.build import BuildConfig
    from pipeline.plan import absolute_paths

    base = ["build-targets", "--executor", "local", "--coco-root", str(demo_root), "--split", SPLIT, "--out",
            str(tmp_path / "store"), "--device", "cpu", "--stages", "depth"]
    assert pipeline_main([*base, "--depth-checkpoint", "a.bin", "--depth-param", "checkpoint=b.bin"]) == 2
    assert "--depth-checkpoint a.bin and --depth-param checkpoint=b.bin disagree" in _one_line(capsys)
    (tmp_path / "empty").mkdir()  # no model in it: the teacher's own message, its name said once
    assert pipeline_main([*base, "--depth-checkpoint", str(tmp_path / "empty")]) == 2
    line = _one_line(capsys)
    assert line.startswith("pipeline: error: depth teacher 'depth-anything-v2': ")
    assert line.count("depth-anything-v2'") == 1
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"w")
    cfg = absolute_paths(BuildConfig(depth_checkpoint="~/w.bin", out="~/store", coco_root="~/coco"))
    expected = tuple(str(tmp_path / name) for name in ("w.bin", "store", "coco"))
    assert (cfg.depth_checkpoint, cfg.out, cfg.coco_root) == expected


def test_make_demo_bad_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    assert pipeline_main(["make-demo", "--out", str(tmp_path / "afile")]) == 2
    assert _one_line(capsys) == f"pipeline: error: --out {tmp_path / 'afile'} is a file; pass a folder to create " \
                                "the demo in"
    foreign = tmp_path / "foreign"
    (foreign / "annotations").mkdir(parents=True)
    (foreign / "annotations" / "captions_train2017.json").write_text("{}")
    assert pipeline_main(["make-demo", "--out", str(foreign)]) == 2
    err = _one_line(capsys)
    assert "already holds a COCO-like tree" in err and "error::" not in err


@pytest.mark.parametrize("remove", ["panoptic_{split}.json", "panoptic_{split}"])
def test_pipeline_missing_panoptic_ground_truth_fails_before_any_work(demo_root: Path, tmp_path: Path, remove: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(demo_root, coco)
    gone = coco / "annotations" / remove.format(split=SPLIT)
    shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    rc = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(coco), "--split", SPLIT,
                        "--out", str(tmp_path / "store"), "--stages", "panoptic", "--panoptic-teacher",
                        "panoptic-gt"])
    assert rc == 2
    err = _one_line(capsys)
    assert err.startswith("pipeline: error: panoptic teacher 'panoptic-gt': ")
    assert ("no panoptic annotations" if remove.endswith(".json") else "PNG folder") in err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("listing, message", [
    (OSError("no network"), "its download list cannot be reached (OSError)"),
    ({"models": {"glove-twitter-25": {}}}, "gensim knows no such model (glove models: glove-twitter-25)"),
])
def test_pipeline_gensim_glove_that_cannot_be_had(demo_root: Path, tmp_path: Path, monkeypatch, listing, message,
                                                  fakes, capsys: pytest.CaptureFixture) -> None:
    import io
    import urllib.request

    import gensim.downloader

    def urlopen(url: str, timeout: float):  # gensim's list of models, or no network
        assert url == gensim.downloader.DATA_LIST_URL and timeout > 0
        if isinstance(listing, Exception):
            raise listing
        return io.BytesIO(json.dumps(listing).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(gensim.downloader, "BASE_DIR", str(tmp_path / "gensim-data"))
    rc = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(demo_root), "--split",
                        "train2017", "--out", str(tmp_path / "store"), "--glove", "glove-wiki-gigaword-300",
                        "--device", "cpu", *(f"--{s}-teacher=fake-{s}" for s in ("depth", "panoptic", "text",
                                                                                   "caption"))])
    assert rc == 2
    err = _one_line(capsys)
    assert err.startswith("pipeline: error: --glove glove-wiki-gigaword-300: ") and message in err
    assert fakes == {} and not (tmp_path / "store").exists()  # before any unit ran or file was written


def test_pipeline_read_only_split_folder_fails_before_any_work(demo_root: Path, tmp_path: Path, monkeypatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    import tempfile

    (tmp_path / "store" / SPLIT).mkdir(parents=True)  # as an earlier build leaves it
    real = tempfile.NamedTemporaryFile

    def read_only_split(*args, dir=None, **kwargs):  # the test runs as root: permissions would not stop it
        if Path(dir).name == SPLIT:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only_split)
    rc = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(demo_root), "--split", SPLIT,
                        "--out", str(tmp_path / "store")])
    assert rc == 2
    err = _one_line(capsys)
    assert "cannot write the store at" in err and "Permission denied" in err


def test_pipeline_unknown_flag_points_at_the_subcommands_help(capsys: pytest.CaptureFixture) -> None:
    assert pipeline_main(["status", "--bogus"]) == 2
    assert _one_line(capsys) == "pipeline: error: unrecognized arguments: --bogus (see `pipeline status --help`)"


def test_pipeline_ray_flags_with_the_local_executor_are_noted(demo_root: Path, tmp_path: Path, fakes,
                                                              capsys: pytest.CaptureFixture) -> None:
    rc = pipeline_main(["build-targets", "--executor", "local", "--num-cpus", "2", "--coco-root", str(demo_root),
                        "--out", str(tmp_path / "store"), "--no-progress", "--device", "cpu", "--size", "32",
                        "--glove", str(demo_root / "glove" / "glove.demo.300d.txt"),
                        *(f"--{s}-teacher=fake-{s}" for s in ("depth", "panoptic", "text", "caption"))])
    assert rc == 0
    assert "pipeline: note: --num-cpus apply to --executor ray only; ignored" in capsys.readouterr().err


def test_pipeline_num_cpus_when_joining_a_cluster_is_noted(demo_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    rc = pipeline_main(["build-targets", "--num-cpus", "2", "--ray-address", "127.0.0.1:1", "--coco-root",
                        str(demo_root), "--out", str(tmp_path / "store"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in err
    assert "pipeline: note: --num-cpus sizes a local cluster started here; joining a running cluster, it is " \
           "ignored" in err


def test_pipeline_dashboard_url_as_ray_address_says_what_is_wanted(demo_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # the Ray Jobs convention
    rc = pipeline_main(["build-targets", "--coco-root", str(demo_root), "--out", str(tmp_path / "store"),
                        "--no-progress"])
    assert rc == 2 and _one_line(capsys).startswith(
        "pipeline: error: Ray address 'http://127.0.0.1:8265' is a dashboard or Ray Jobs URL; the driver joins")
    assert not (tmp_path / "store").exists()


def test_pipeline_notes_a_split_built_with_other_teachers_than_train(demo_root: Path, tmp_path: Path, fakes,
                                                                     capsys: pytest.CaptureFixture) -> None:
    common = ["build-targets", "--executor", "local", "--coco-root", str(demo_root), "--out", str(tmp_path / "s"),
              "--no-progress", "--device", "cpu", "--size", "32",
              "--glove", str(demo_root / "glove" / "glove.demo.300d.txt"),
              *(f"--{s}-teacher=fake-{s}" for s in ("depth", "panoptic", "text", "caption"))]
    assert pipeline_main(common + ["--split", "train2017"]) == 0
    capsys.readouterr()
    assert pipeline_main(common + ["--split", SPLIT]) == 0  # the same settings: no note
    assert "note:" not in capsys.readouterr().err
    assert pipeline_main(common + ["--split", SPLIT, "--depth-param", "gain=2"]) == 0
    err = capsys.readouterr().err
    assert f"note: {SPLIT} is built with other teacher settings than train2017 was (depth_params)" in err


def test_pipeline_sigterm_stops_the_command_as_ctrl_c_does(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    import signal
    import time

    import pipeline.cli as cli

    def terminated_midway(args) -> int:  # `docker stop`, `timeout`, a scheduler's preemption
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_build_targets", terminated_midway)
    assert pipeline_main(["build-targets"]) == 143
    assert _one_line(capsys) == ("pipeline: terminated; finished units are kept: run the same command again to "
                                 "resume")
    assert signal.getsignal(signal.SIGTERM) == before
