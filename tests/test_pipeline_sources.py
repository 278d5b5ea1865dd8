"""A split built from a folder of images (`--images DIR`): stable keys, incremental rebuilds, removed files,
ground truth refused, a damaged id map."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

import pipeline_fakes
from pipeline.build import build_targets
from pipeline.cli import main as pipeline_main
from pipeline_store_checks import tar_files
from shards.manifest import load_manifest
from shards.verify import verify_split

SPLIT = "factory"


@pytest.fixture
def folder(demo_root: Path, tmp_path: Path) -> Path:
    """Ten of the demo's photos in nested folders, with names no COCO split has; plus a non-image file."""
    root = tmp_path / "photos"
    good = sorted(p for p in (demo_root / "train2017").glob("*.jpg") if p.stat().st_size > 1000)[:10]
    for i, src in enumerate(good):
        dst = root / ("line-a" if i % 2 else "line-b") / f"cam{i}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def config(demo_root: Path, folder: Path):
    def make(out: Path, **kw):
        return pipeline_fakes.make_config(demo_root, out, images=str(folder), split=SPLIT, vocab_split=SPLIT,
                                          shard_size=4, **kw)
    return make


def _ids(out: Path) -> dict[str, int]:
    return json.loads((out / SPLIT / "ids.json").read_text())["ids"]


def test_a_folder_builds_a_store_that_verifies(config, folder: Path, tmp_path: Path, fakes) -> None:
    out = tmp_path / "store"
    report = build_targets(config(out))
    assert report["ok"] and report["samples"] == 10 and report["rejected"] == 0
    assert not verify_split(out, SPLIT).faults
    ids = _ids(out)
    assert sorted(ids) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))
    assert sorted(ids.values()) == list(range(1, 11))  # numbered in path order from 1
    assert list(ids) == sorted(ids) and ids["line-a/cam1.jpg"] == 1
    m = load_manifest(out / SPLIT)
    assert set(m.columns) == {"base", "pose", "depth", "normals", "panoptic", "groups", "text", "caption", "tokens"}


def test_added_files_keep_every_key_and_rebuild_only_new_or_changed_shards(config, folder: Path, tmp_path: Path,
                                                                           demo_root: Path, fakes) -> None:
    out = tmp_path / "store"
    assert build_targets(config(out))["ok"]  # 10 images: shards of 4, 4, 2
    before, tars = _ids(out), tar_files(out / SPLIT)
    extra = sorted(p for p in (demo_root / "val2017").glob("*.jpg") if p.stat().st_size > 1000)[:3]
    assert len(extra) == 3
    for i, src in enumerate(extra):  # "a-first" sorts before every old path: it still gets a new, larger id
        shutil.copy(src, folder / f"a-first{i}.jpg")
    fakes.clear()
    report = build_targets(config(out))
    after = _ids(out)
    assert report["ok"] and report["samples"] == 13
    assert {k: after[k] for k in before} == before  # every existing key kept
    assert sorted(after[f"a-first{i}.jpg"] for i in range(3)) == [11, 12, 13]
    runs = {s: st["run"] for s, st in report["stages"].items()}
    assert runs["base"] == 2 and runs["depth"] == 2  # the last shard (2 -> 4 images) and a new one (1 image)
    assert fakes["fake-depth"] == 2 + 3  # only their images were predicted again
    now = tar_files(out / SPLIT)
    unchanged = [p for p in tars if p.endswith(("-000000.tar", "-000001.tar"))]
    assert unchanged and all(now[p] == tars[p] for p in unchanged)  # the first shards' bytes untouched
    assert not verify_split(out, SPLIT).faults


def test_a_removed_file_is_reported_and_its_sample_dropped(config, folder: Path, tmp_path: Path, fakes, capsys) -> None:
    out = tmp_path / "store"
    assert build_targets(config(out))["ok"]
    tars = tar_files(out / SPLIT)
    gone = "line-b/cam0.jpg"  # id 6: the second shard (ids 5-8)
    (folder / gone).unlink()
    report = build_targets(config(out))
    assert report["ok"] and report["samples"] == 9
    assert report["removed_files"] == [gone]
    assert gone in _ids(out)  # the id stays taken; the file comes back with its old key
    assert {s: st["run"] for s, st in report["stages"].items()}["base"] == 1  # its own shard only
    now = tar_files(out / SPLIT)
    assert all(now[p] == tars[p] for p in tars if not p.endswith("-000001.tar"))  # the others' bytes untouched
    assert not verify_split(out, SPLIT).faults


def test_a_changed_file_rebuilds_its_shard(config, folder: Path, tmp_path: Path, fakes) -> None:
    out = tmp_path / "store"
    assert build_targets(config(out))["ok"]
    target = folder / "line-a" / "cam1.jpg"  # id 1: the first shard
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10 ** 9))
    report = build_targets(config(out))
    assert {s: st["run"] for s, st in report["stages"].items()}["depth"] == 1


def test_ground_truth_teachers_on_a_folder_are_one_line(config, folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "store"
    code = pipeline_main(["build-targets", "--executor", "local", "--images", str(folder), "--split", SPLIT,
                          "--out", str(out), "--device", "cpu", "--caption-teacher", "caption-gt",
                          "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "caption teacher 'caption-gt': the split has no caption annotations" in err
    # the default pose teacher reads COCO keypoints: named in the same line, with the model teachers to use
    assert "pose teacher 'pose-gt': the split has no person keypoint annotations" in err and "vitpose" in err, err
    assert not out.exists()


def test_bad_folder_and_split_names_are_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for argv in (["--images", str(tmp_path / "missing"), "--split", SPLIT],
                 ["--images", str(tmp_path / "empty"), "--split", SPLIT],
                 ["--images", str(tmp_path / "empty"), "--split", "../up"],
                 ["--images", str(tmp_path / "empty"), "--split", "a.b"]):  # shard names may hold no dot
        code = pipeline_main(["build-targets", "--executor", "local", "--out", str(tmp_path / "out"),
                              "--no-progress", *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and err.startswith("pipeline: error: "), (argv, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", [
    lambda d: d["ids"].update({"../../etc/passwd": 99}),
    lambda d: d["ids"].update({"dup.jpg": 1}),
    lambda d: d.update(next="many"),
    lambda d: d.update(format="other"),
])
def test_a_damaged_id_map_is_one_line_and_reads_no_file_outside(config, folder: Path, tmp_path: Path, fakes, capsys,
                                                                  damage) -> None:
    out = tmp_path / "store"
    assert build_targets(config(out))["ok"]
    path = out / SPLIT / "ids.json"
    doc = json.loads(path.read_text())
    damage(doc)
    path.write_text(json.dumps(doc))
    code = pipeline_main(["build-targets", "--executor", "local", "--images", str(folder), "--split", SPLIT,
                          "--out", str(out), "--shard-size", "4", "--size", "64", "--device", "cpu",
                          *pipeline_fakes.FLAGS, "--vocab-split", SPLIT,
                          "--glove", config(out).glove, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "ids.json" in err and "remove it" in err, err


@pytest.fixture
def with_unlabeled(demo_root: Path, tmp_path: Path) -> Path:
    """The demo COCO root plus an unlabeled2017 split: images and image_info_unlabeled2017.json only."""
    import cv2

    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    (root / "unlabeled2017").mkdir()
    images = []
    for i, src in enumerate(sorted(p for p in (demo_root / "val2017").glob("*.jpg") if p.stat().st_size > 1000)):
        h, w = cv2.imread(str(src)).shape[:2]
        name = f"{500000 + i:012d}.jpg"
        shutil.copy(src, root / "unlabeled2017" / name)
        images.append({"id": 500000 + i, "file_name": name, "width": w, "height": h})
    (root / "annotations" / "image_info_unlabeled2017.json").write_text(json.dumps({"images": images}))
    return root


def test_coco_unlabeled2017_builds_with_train_s_vocabulary(with_unlabeled: Path, tmp_path: Path, fakes,
                                                          capsys) -> None:
    out = tmp_path / "store"
    assert build_targets(pipeline_fakes.make_config(with_unlabeled, out))["ok"]  # train2017: the vocabulary
    report = build_targets(pipeline_fakes.make_config(with_unlabeled, out, split="unlabeled2017"))
    n = len(list((with_unlabeled / "unlabeled2017").glob("*.jpg")))
    assert report["ok"] and report["samples"] == n and n >= 3
    assert not verify_split(out, "unlabeled2017").faults
    assert (out / "unlabeled2017" / "vocab.json").read_bytes() == (out / "train2017" / "vocab.json").read_bytes()
    code = pipeline_main(["build-targets", "--executor", "local", "--coco-root", str(with_unlabeled), "--split",
                          "unlabeled2017", "--out", str(tmp_path / "gt"), "--device", "cpu",
                          "--panoptic-teacher", "panoptic-gt", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no panoptic annotations" in err and "pose-gt" in err, err


def _write_video(path: Path, frames: int = 30, fps: float = 10.0) -> None:
    """An MJPEG AVI whose frame i is a flat grey of level 8 * i (64x48)."""
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert out.isOpened()
    for i in range(frames):
        out.write(np.full((48, 64, 3), 8 * i, np.uint8))
    out.release()


def test_a_video_s_sampled_frames_are_samples_with_their_times(demo_root: Path, tmp_path: Path, fakes) -> None:
    from shards.reader import StoreReader

    videos = tmp_path / "videos"
    _write_video(videos / "robot" / "run1.avi")
    out = tmp_path / "store"
    cfg = pipeline_fakes.make_config(demo_root, out, videos=str(videos), frame_step=5, split="robot",
                                     vocab_split="robot", shard_size=4)
    report = build_targets(cfg)
    assert report["ok"] and report["samples"] == 6 and report["rejected"] == 0  # frames 0, 5, ..., 25
    assert not verify_split(out, "robot").faults
    metas = [s["meta.json"] for s in StoreReader(out, "robot", ["base"])]
    assert [(m["video"], m["frame"], m["time"]) for m in metas] == [("robot/run1.avi", f, f / 10) for f in
                                                                    range(0, 30, 5)]
    for s in StoreReader(out, "robot", ["base"]):  # the right frame: its grey level, inside the letterbox
        m = s["meta.json"]
        (x0, y0), (w, h) = m["offset"], m["resized"]
        level = float(s["jpg"][y0 + 2:y0 + h - 2, x0 + 2:x0 + w - 2].mean())
        assert abs(level - 8 * m["frame"]) < 4, (m["frame"], level)
    ids = _ids_of(out, "robot")
    _write_video(videos / "robot" / "run2.avi", frames=10)  # a second video: new keys after the first's
    report = build_targets(cfg)
    assert report["ok"] and report["samples"] == 8
    after = _ids_of(out, "robot")
    assert {k: after[k] for k in ids} == ids and sorted(after[k] for k in after if "run2" in k) == [7, 8]
    two_fps = dataclasses.replace(cfg, frame_step=0, video_fps=2.0, out=str(tmp_path / "fps"))
    assert build_targets(two_fps)["samples"] == 8  # 10 fps video, 2 per second: every 5th frame again


def _ids_of(out: Path, split: str) -> dict[str, int]:
    return json.loads((out / split / "ids.json").read_text())["ids"]


def test_status_counts_the_shards_whose_files_changed(config, folder: Path, tmp_path: Path, demo_root: Path,
                                                      fakes) -> None:
    from pipeline.status import split_status

    out = tmp_path / "store"
    assert build_targets(config(out))["ok"]
    assert {r["state"] for r in split_status(config(out))["stages"]} == {"current"}
    shutil.copy(next(p for p in sorted((demo_root / "val2017").glob("*.jpg")) if p.stat().st_size > 1000),
                folder / "late.jpg")
    rows = {r["stage"]: r for r in split_status(config(out))["stages"]}
    assert rows["base"]["state"] == "incomplete" and rows["base"]["done"] == 2  # of 3: the last one changed
    assert not (out / SPLIT / "ids.json").read_text().count("late.jpg")  # status writes nothing


def test_a_build_stopped_after_planning_resumes_and_stages_wait_for_the_whole_split(config, folder: Path,
                                                                                   tmp_path: Path, demo_root: Path,
                                                                                   fakes) -> None:
    from pipeline.plan import BuildError, prepare

    out = tmp_path / "store"
    assert build_targets(config(out))["ok"]
    shutil.copy(next(p for p in sorted((demo_root / "val2017").glob("*.jpg")) if p.stat().st_size > 1000),
                folder / "late.jpg")
    prepare(config(out), hold=lambda split_path: None)  # planned (records forgotten, ids kept), then "killed"
    with pytest.raises(BuildError, match="without --stages"):  # the other columns lack the changed shard too
        build_targets(config(out, stages=("depth",)))
    report = build_targets(config(out))
    assert report["ok"] and report["samples"] == 11 and not verify_split(out, SPLIT).faults
    assert {s: st["run"] for s, st in report["stages"].items()}["base"] == 1  # the last shard (ids 9-11)
    again = build_targets(config(out, stages=("depth",)))  # now the digests are the store's: nothing to do
    assert again["ok"] and all(st["run"] == 0 for st in again["stages"].values())


def test_names_the_id_map_cannot_hold_are_left_out_and_said(config, folder: Path, tmp_path: Path, fakes,
                                                            capsys) -> None:
    shutil.copy(folder / "line-a" / "cam1.jpg", folder / "back\\slash.jpg")
    os.link(folder / "line-a" / "cam1.jpg", os.fsencode(folder) + b"/bad-\xff.jpg")
    out = tmp_path / "store"
    report = build_targets(config(out))
    assert report["ok"] and report["samples"] == 10
    assert report["source_notes"][0].startswith("2 file(s) left out: their names are not plain UTF-8 paths")


def test_the_map_is_read_again_under_the_build_lock(config, folder: Path, tmp_path: Path, demo_root: Path,
                                                    fakes) -> None:
    from pipeline.plan import prepare
    from pipeline.sources import read_id_map, write_id_map

    out = tmp_path / "store"
    assert build_targets(config(out))["ok"]
    shutil.copy(next(p for p in sorted((demo_root / "val2017").glob("*.jpg")) if p.stat().st_size > 1000),
                folder / "late.jpg")

    def another_build_ended(split_path: Path) -> None:  # between the first read and the lock: it numbered late.jpg
        m = read_id_map(split_path)
        m.ids["late.jpg"], m.next_id = 50, 51
        write_id_map(split_path, m)

    plan = prepare(config(out), hold=another_build_ended)
    assert {r.file_name: r.image_id for r in plan.records["factory-000012"]} == {"late.jpg": 50}
    assert _ids(out)["late.jpg"] == 50
