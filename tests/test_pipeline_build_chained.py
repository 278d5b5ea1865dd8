"""Derived stages chained to their teacher's write unit: same bytes as from the store, no re-read, fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipeline_fakes
from pipeline_fakes import make_config
from pipeline import units
from pipeline.build import build_targets
from pipeline_store_checks import check_split, tar_files
from shards.manifest import load_manifest
from shards.vocab import Vocabulary




def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the column of every shard a unit reads back from the store."""
    columns: list[str] = []
    real = units.read_column_shard

    def counted(split_path, column, *args, **kw):
        columns.append(column)
        return real(split_path, column, *args, **kw)

    monkeypatch.setattr(units, "read_column_shard", counted)
    return columns


def test_chained_stages_read_nothing_back_and_match_units_reading_the_store(
        demo_root: Path, fakes: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    real_load = Vocabulary.load.__func__
    monkeypatch.setattr(Vocabulary, "load", classmethod(lambda cls, path: loads.append(path) or real_load(cls, path)))
    reads = count_reads(monkeypatch)
    out = tmp_path / "store"
    report = build_targets(make_config(demo_root, out))
    n_shards = len(load_manifest(out / "train2017").shards)
    assert report["ok"] and n_shards > 1
    assert report["stages"]["normals"]["run"] == report["stages"]["groups"]["run"] == n_shards
    # normals and groups came from memory; only the vocabulary and the tokens units read captions back
    assert sorted(set(reads)) == ["caption"] and len(reads) == 2 * n_shards
    assert len(loads) == 1  # one vocabulary load shared by every tokens unit
    tars = tar_files(out / "train2017")

    reads.clear()
    fakes.clear()
    again = build_targets(make_config(demo_root, out, stages=("normals", "groups"), force=True))
    assert again["ok"] and set(again["stages"]) == {"normals", "groups"} and fakes == {}
    assert sorted(reads) == sorted(["depth", "base", "panoptic"] * n_shards)  # derived units read the store
    assert tar_files(out / "train2017") == tars  # and write the same bytes


def test_a_failing_chained_stage_runs_again_from_the_store(demo_root: Path, fakes: dict[str, int],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    assert build_targets(make_config(demo_root, reference))["ok"]
    state = {"failed": 0}
    real = units.derived_members

    def first_normals_fails(name, *args, **kw):
        if name == "normals" and not state["failed"]:
            state["failed"] += 1
            raise RuntimeError("normals crashed once")
        return real(name, *args, **kw)

    monkeypatch.setattr(units, "derived_members", first_normals_fails)
    reads = count_reads(monkeypatch)
    out = tmp_path / "store"
    report = build_targets(make_config(demo_root, out))
    n_shards = len(load_manifest(out / "train2017").shards)
    assert report["ok"] and state["failed"] == 1 and not report["failures"]
    assert report["stages"]["normals"]["run"] == n_shards and report["stages"]["normals"]["failed"] == 0
    assert reads.count("depth") == 1  # exactly the one shard whose chained normals failed
    assert tar_files(out / "train2017") == tar_files(reference / "train2017")
    check_split(out, demo_root, "train2017")


def test_a_failed_teacher_unit_leaves_its_chained_stage_not_run(demo_root: Path, fakes: dict[str, int], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_predict = pipeline_fakes.FakeDepth.predict

    def broken(self, inputs):
        if any(inp.image_id == 632 for inp in inputs):
            raise RuntimeError("depth model crashed")
        return real_predict(self, inputs)

    monkeypatch.setattr(pipeline_fakes.FakeDepth, "predict", broken)
    report = build_targets(make_config(demo_root, tmp_path / "store", retries=0))
    failed = {(f["stage"], f["shard"]) for f in report["failures"]}
    [(_, shard)] = [f for f in failed if f[0] == "depth"]
    assert failed == {("depth", shard), ("normals", shard)}
    assert report["stages"]["normals"]["run"] == report["stages"]["depth"]["run"]
    assert set(load_manifest(tmp_path / "store" / "train2017").columns) == {"base", "pose", "panoptic", "groups",
                                                                           "text", "caption", "tokens"}
