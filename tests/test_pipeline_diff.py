"""`pipeline diff`: two versions of a column compared with the measure of each target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pipeline_fakes
from pipeline.build import build_targets
from pipeline.cli import main as pipeline_main
from pipeline.diff import DiffError, diff_sheet, diff_versions, resolve_versions
from shards.manifest import load_manifest

CHANGED = {"depth_params": {"gain": 2.0}, "panoptic_params": {"gain": 2.0}, "text_params": {"gain": 2.0},
           "caption_params": {"gain": 2.0}, "pose_params": {"gain": 1.2}}  # a person 1.2 times as wide


@pytest.fixture(scope="module")
def two_builds(demo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One store built twice, the second time with every teacher changed: two versions of every teacher column
    and of what derives from them."""
    out = tmp_path_factory.mktemp("diff")
    with pytest.MonkeyPatch.context() as mp:
        pipeline_fakes.register_for_test(mp)
        first = build_targets(pipeline_fakes.make_config(demo_root, out))
        second = build_targets(pipeline_fakes.make_config(demo_root, out, **CHANGED))
    assert first["ok"] and second["ok"]
    return out, first, second


def _overall(out: Path, stage: str, old: str | None = None, new: str | None = None) -> dict:
    pair = resolve_versions(out, "train2017", stage, old, new)
    diff, _ = diff_versions(out, "train2017", pair)
    return diff.overall


@pytest.mark.parametrize("stage", ["pose", "depth", "normals", "panoptic", "groups", "text", "caption", "tokens"])
def test_a_version_against_itself_agrees_perfectly(two_builds, stage: str) -> None:
    out, _, second = two_builds
    active = load_manifest(out / "train2017").columns[stage]
    o = _overall(out, stage, active[:10], active)
    assert o["samples"] == second["samples"] and o["unchanged"] == o["samples"]
    expected = {"pose": {"joint_agreement": 1.0, "joint_px": 0.0},
                "depth": {"absrel": 0.0, "delta1": 1.0, "normals_angle_deg": 0.0}, "normals": {"angle_deg": 0.0},
                "text": {"mask_iou": 1.0}, "caption": {"word_jaccard": 1.0, "changed": 0},
                "tokens": {"token_jaccard": 1.0, "changed": 0}}.get(stage, {"pixel_agreement": 1.0, "flows": []})
    assert {k: o[k] for k in expected} == expected
    if "iou" in o:
        assert set(o["iou"].values()) == {1.0}


def test_a_changed_teacher_shows_in_the_measures(two_builds, demo_root: Path) -> None:
    out, first, second = two_builds
    assert set(second["replaced"]) == {"pose", "depth", "normals", "panoptic", "groups", "text", "caption", "tokens"}
    for stage, change in second["replaced"].items():  # the defaults: the version before and the active one
        pair = resolve_versions(out, "train2017", stage)
        assert (pair.old, pair.new) == (change["from"], change["to"]), stage
    depth = _overall(out, "depth")
    assert 0 < depth["absrel"] < 0.2 and 0.5 < depth["delta1"] < 1.0  # mean*2+1 vs mean+1: close, not equal
    panoptic = _overall(out, "panoptic")
    assert 0.3 < panoptic["pixel_agreement"] < 0.8  # odd red values move to the class below
    assert panoptic["flows"] and all(f["from"] != f["to"] for f in panoptic["flows"])
    assert min(panoptic["iou"].values()) < 1.0
    text = _overall(out, "text")  # the box is twice as wide: IoU 1/2
    assert text["mask_iou"] == pytest.approx(0.5, abs=0.08)
    assert text["polygons_old"] == text["polygons_new"] == second["samples"]
    pose = _overall(out, "pose")  # one person per image, found again, its joints moved sideways by 2 to 4 pixels
    assert pose["persons_old"] == pose["persons_new"] == second["samples"] and pose["unchanged"] == 0
    assert pose["joint_agreement"] < 0.5 and 1.0 < pose["joint_px"] < 6.0
    caption = _overall(out, "caption")  # the first caption only: fewer words, fewer changed than samples
    assert 0 < caption["word_jaccard"] < 1 and 0 < caption["changed"] <= caption["samples"]
    multi = sum(1 for s in _samples(out, "caption") if len(s) > 1)
    assert caption["changed"] == multi


def _samples(out: Path, stage: str) -> list[list[str]]:
    from shards.reader import StoreReader

    old = resolve_versions(out, "train2017", stage).old
    return [s["caption.json"]["captions"] for s in StoreReader(out, "train2017", [stage], versions={stage: old})]


def test_the_sheet_shows_the_most_changed_samples(two_builds) -> None:
    out, _, _ = two_builds
    pair = resolve_versions(out, "train2017", "depth")
    diff, worst = diff_versions(out, "train2017", pair, top=3)
    changes = sorted((s["change"] for s in diff.samples), reverse=True)
    assert len(worst) == 3
    sheet = diff_sheet("depth", worst)
    assert sheet.ndim == 3 and sheet.shape[1] == 4 * 256 and sheet.shape[0] > 3 * 256  # 3 rows of 4 tiles
    assert changes[0] >= changes[-1]
    assert diff_sheet("depth", []) is None


def test_versions_that_cannot_be_compared_are_one_line(two_builds) -> None:
    out, _, second = two_builds
    depth_fp = second["replaced"]["depth"]["to"]
    with pytest.raises(DiffError, match="it is a version of depth, not of panoptic"):
        resolve_versions(out, "train2017", "panoptic", depth_fp[:12])
    with pytest.raises(DiffError, match="no version of depth"):
        resolve_versions(out, "train2017", "depth", "abcdef123456")
    with pytest.raises(DiffError, match="at least 6 hex digits"):
        resolve_versions(out, "train2017", "depth", "../x")
    with pytest.raises(DiffError, match="cannot be diffed"):
        resolve_versions(out, "train2017", "base")


def test_one_version_only_and_another_shard_plan_are_refused(demo_root: Path, tmp_path: Path, fakes, capsys) -> None:
    out = tmp_path / "store"
    assert build_targets(pipeline_fakes.make_config(demo_root, out, stages=("depth",)))["ok"]
    with pytest.raises(DiffError, match="one version on disk"):
        resolve_versions(out, "train2017", "depth")
    old = load_manifest(out / "train2017").columns["depth"]
    assert build_targets(pipeline_fakes.make_config(demo_root, out, stages=("depth",), shard_size=2))["ok"]
    code = pipeline_main(["diff", "--out", str(out), "--split", "train2017", "--stage", "depth", "--from", old[:8],
                          "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "does not hold the split's" in err and "shards as planned" in err, err
    assert not (tmp_path / "r").exists()


def test_the_cli_writes_the_table_the_json_and_the_sheet(two_builds, tmp_path: Path, capsys) -> None:
    out, _, second = two_builds
    code = pipeline_main(["diff", "--out", str(out), "--split", "train2017", "--stage", "text", "--top", "2",
                          "--report", str(tmp_path / "r"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "text of train2017" in printed and "mask_iou" in printed
    doc = json.loads((tmp_path / "r" / "diff.json").read_text())
    assert doc["stage"] == "text" and doc["to"] == second["replaced"]["text"]["to"]
    assert len(doc["samples"]) == second["samples"] and doc["overall"]["mask_iou"] < 1
    import cv2

    sheet = cv2.imread(str(tmp_path / "r" / "diff-sheet.png"))
    assert sheet is not None and sheet.shape[0] > 2 * 256 and np.any(sheet[..., 2] == 255)  # the changed pixels


def test_a_large_split_can_be_compared_on_a_seeded_sample(two_builds) -> None:
    out, _, second = two_builds
    pair = resolve_versions(out, "train2017", "depth")
    diff, _ = diff_versions(out, "train2017", pair, max_samples=5, seed=3)
    counts = [e.count for e in load_manifest(out / "train2017").shards]
    assert 5 <= diff.overall["samples"] == sum(min(2, c) for c in counts) < second["samples"]  # 2 of each shard
    assert diff.overall["sampled"] == {"max_samples": 5, "seed": 3, "shards": len(counts)}
    assert diff.overall["absrel"] > 0


def test_pose_measures_match_persons_by_their_boxes() -> None:
    from pipeline.diff import pose_measures

    def pose(*persons):
        return {"pose.json": {"persons": [{"keypoints": k, "bbox": b} for k, b in persons], "crowd": []}}

    hidden = [[0.0, 0.0, 0]]
    one_joint = ([[10.0, 10.0, 2]] + hidden * 16, [5.0, 5.0, 10.0, 20.0])  # COCO has many such people
    upright = ([[30.0, 10.0 + i, 2] for i in range(17)], [25.0, 8.0, 10.0, 20.0])  # joints on one line
    both = pose(one_joint, upright)
    same = pose_measures(both, both, {"size": 64})
    assert same["matched"] == 2 and same["joint_agreement"] == 1.0 and same["change"] == 0.0
    moved = pose_measures(both, pose(one_joint, ([[33.0, 10.0 + i, 2] for i in range(17)], upright[1])),
                          {"size": 64})  # 3 px > 2% of 64: the upright person's joints all moved
    assert moved["matched"] == 2 and moved["joint_px"] == pytest.approx(3 * 17 / 18)
    assert moved["joint_agreement"] == pytest.approx(1 / (18 + 17))  # 1 agrees; 35 joints seen by either
    gone = pose_measures(both, pose(one_joint), {"size": 64})
    assert (gone["persons_old"], gone["persons_new"], gone["matched"]) == (2, 1, 1)
    assert gone["joint_agreement"] == pytest.approx(1 / 18)
