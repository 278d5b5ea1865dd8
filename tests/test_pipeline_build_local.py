"""build_targets in-process on the demo split: completeness, resume, single-stage re-runs, failures, status."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import pipeline_fakes
from pipeline_fakes import make_config
from pipeline.build import build_targets
from pipeline.status import split_status
from pipeline_store_checks import check_split, snapshot, tar_files
from shards.manifest import load_manifest
from shards.schema import COLUMNS




@pytest.fixture(scope="module")
def built(demo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One complete build of the demo train split, shared read-only by several tests."""
    with pytest.MonkeyPatch.context() as mp:  # the fakes leave the registry with this fixture
        pipeline_fakes.register_for_test(mp)
        out = tmp_path_factory.mktemp("store")
        report = build_targets(make_config(demo_root, out))
    yield out, report


def test_build_is_complete_and_accounts_for_every_image(built, demo_root: Path) -> None:
    out, report = built
    counts = check_split(out, demo_root, "train2017")
    assert report["ok"] and not report["failures"]
    assert counts["rejected"] >= 1  # the demo ships bad files; they must be lines, not silent drops
    assert report["samples"] == counts["samples"] and report["rejected"] == counts["rejected"]
    assert report["image_ids"] == counts["samples"] + counts["rejected"]
    n_shards = len(load_manifest(out / "train2017").shards)
    for stage, st in report["stages"].items():
        assert (st["run"], st["skipped"], st["failed"], st["images"]) == (n_shards, 0, 0, counts["samples"]), stage
    on_disk = json.loads((out / "train2017" / "build-report.json").read_text())
    assert on_disk["stages"] == report["stages"]
    vocab = json.loads((out / "train2017" / "vocab.json").read_text())
    assert vocab["words"], "the train split publishes its vocabulary"


def test_rerun_skips_every_finished_unit(built, demo_root: Path, fakes: dict[str, int], tmp_path: Path) -> None:
    out, _ = built
    before = snapshot(out / "train2017", skip=("build-report.json",))
    report = build_targets(make_config(demo_root, out))
    assert fakes == {}  # no teacher predicted anything
    assert all(st["run"] == 0 and st["skipped"] == st["units"] for st in report["stages"].values())
    assert snapshot(out / "train2017", skip=("build-report.json",)) == before


def test_changing_depth_parameters_reruns_depth_and_normals_only(built, demo_root: Path, fakes: dict[str, int],
                                                                 tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "store"
    shutil.copytree(built[0], out, copy_function=shutil.copy2)
    split = out / "train2017"
    old = load_manifest(split).columns
    untouched = snapshot(split, skip=("depth", "normals", "manifest.json", "build-report.json", "teachers.json"))
    report = build_targets(make_config(demo_root, out, depth_params={"gain": 2.0}))
    new = load_manifest(split).columns
    assert {c for c in COLUMNS if new[c] != old[c]} == {"depth", "normals"}
    assert {s for s, st in report["stages"].items() if st["run"]} == {"depth", "normals"}
    assert all(st["skipped"] == st["units"] for s, st in report["stages"].items() if s not in ("depth", "normals"))
    n_samples = report["samples"]
    assert fakes == {"fake-depth": n_samples}  # no other teacher was called
    skip = ("depth", "normals", "manifest.json", "build-report.json", "teachers.json")
    assert snapshot(split, skip=skip) == untouched
    assert (split / "depth" / old["depth"]).is_dir()  # the old version stays until gc
    check_split(out, demo_root, "train2017")


def test_stages_flag_with_force_rebuilds_that_stage_and_dependants(built, demo_root: Path, fakes: dict[str, int],
                                                                   tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "store"
    shutil.copytree(built[0], out, copy_function=shutil.copy2)
    split = out / "train2017"
    tars = tar_files(split)
    report = build_targets(make_config(demo_root, out, stages=("caption",), force=True))
    assert set(report["stages"]) == {"caption", "tokens"}
    assert all(st["run"] == st["units"] and st["skipped"] == 0 for st in report["stages"].values())
    assert fakes == {"fake-caption": report["samples"]}
    assert tar_files(split) == tars  # deterministic: the rebuilt shards have the same bytes


def test_failed_unit_blocks_activation_and_a_rerun_finishes(demo_root: Path, fakes: dict[str, int],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_predict = pipeline_fakes.FakeText.predict

    def broken(self, inputs):
        calls["n"] += 1
        if any(inp.image_id == 632 for inp in inputs):
            raise RuntimeError("text model crashed")
        return real_predict(self, inputs)

    monkeypatch.setattr(pipeline_fakes.FakeText, "predict", broken)
    out = tmp_path / "store"
    report = build_targets(make_config(demo_root, out, retries=1))
    assert not report["ok"]
    assert [(f["stage"], "crashed" in f["error"]) for f in report["failures"]] == [("text", True)]
    assert report["stages"]["text"]["failed"] == 1
    active = load_manifest(out / "train2017").columns
    assert "text" not in active and set(active) == set(COLUMNS) - {"text"}
    monkeypatch.setattr(pipeline_fakes.FakeText, "predict", real_predict)
    again = build_targets(make_config(demo_root, out))
    assert again["ok"] and {s for s, st in again["stages"].items() if st["run"]} == {"text"}
    n_shards = len(load_manifest(out / "train2017").shards)
    assert (again["stages"]["text"]["run"], again["stages"]["text"]["skipped"]) == (1, n_shards - 1)
    check_split(out, demo_root, "train2017")


def test_retry_recovers_a_flaky_unit(demo_root: Path, fakes: dict[str, int], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"failed": False}
    real_predict = pipeline_fakes.FakeDepth.predict

    def flaky(self, inputs):
        if not state["failed"]:
            state["failed"] = True
            raise RuntimeError("transient")
        return real_predict(self, inputs)

    monkeypatch.setattr(pipeline_fakes.FakeDepth, "predict", flaky)
    report = build_targets(make_config(demo_root, tmp_path / "store", stages=("depth",)))
    assert report["ok"] and state["failed"] and report["stages"]["depth"]["failed"] == 0
    # --stages depth on an empty store also builds what depth reads (base), and nothing else
    assert set(load_manifest(tmp_path / "store" / "train2017").columns) == {"base", "depth", "normals"}
    assert set(fakes) == {"fake-depth"}


def test_val_split_reuses_train_vocabulary(built, demo_root: Path, fakes: dict[str, int], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "store"
    shutil.copytree(built[0], out, copy_function=shutil.copy2)
    report = build_targets(make_config(demo_root, out, split="val2017"))
    assert report["ok"]
    check_split(out, demo_root, "val2017")
    assert (out / "val2017" / "vocab.json").read_bytes() == (out / "train2017" / "vocab.json").read_bytes()


def test_status_reports_done_stale_and_missing(built, demo_root: Path, fakes: dict[str, int]) -> None:
    out, _ = built
    cfg = make_config(demo_root, out)
    rows = {r["stage"]: r for r in split_status(cfg)["stages"]}
    n = len(load_manifest(out / "train2017").shards)
    assert all(r["state"] == "current" and r["done"] == n and r["missing"] == 0 for r in rows.values())
    rows = {r["stage"]: r for r in split_status(dataclasses.replace(cfg, normals_scale=100.0))["stages"]}
    assert rows["normals"]["state"] == "stale" and (rows["normals"]["done"], rows["normals"]["stale"]) == (0, n)
    assert rows["depth"]["state"] == "current"


def test_lost_split_vocabulary_is_published_again(built, demo_root: Path, fakes: dict[str, int],
                                                  tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "store"
    shutil.copytree(built[0], out, copy_function=shutil.copy2)
    expected = (out / "train2017" / "vocab.json").read_bytes()
    (out / "train2017" / "vocab.json").unlink()  # as if killed between activating tokens and copying it
    report = build_targets(make_config(demo_root, out))
    assert all(st["run"] == 0 for st in report["stages"].values()) and fakes == {}
    assert (out / "train2017" / "vocab.json").read_bytes() == expected


def test_shards_in_flight_fit_the_executors_memory_budget(demo_root: Path, fakes: dict[str, int], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.build import _Run
    from pipeline.executors import LocalExecutor
    from pipeline.plan import prepare

    class Budgeted(LocalExecutor):
        budget: int | None = None

        def memory_budget(self) -> int | None:
            return self.budget

    cfg = make_config(demo_root, tmp_path / "store", max_inflight_shards=4)
    ex = Budgeted()
    plan = prepare(cfg, ex)
    biggest = max(sum(3 * r.width * r.height for r in recs) for recs in plan.records.values())
    assert _Run(plan, ex)._inflight_limit() == 4  # no budget: the setting
    ex.budget = int(100 * biggest)
    assert _Run(plan, ex)._inflight_limit() == 4  # room to spare
    ex.budget = int(2.5 * 1.25 * biggest / 0.8)
    with caplog.at_level("WARNING", logger="pipeline.build"):
        assert _Run(plan, ex)._inflight_limit() == 2
    assert "do not fit" in caplog.text
    ex.budget = 1  # never below one shard: the build still runs
    report = build_targets(cfg, executor=ex)
    assert report["ok"] and report["samples"] > 0


def test_local_progress_moves_unit_by_unit(demo_root: Path, fakes: dict[str, int], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import build

    seen = []  # (stage, images predicted by the teachers so far) at each progress update
    real_update = build.Progress.update
    monkeypatch.setattr(build.Progress, "update", lambda self, stage, n: (
        seen.append((stage, sum(fakes.values()))), real_update(self, stage, n))[1])
    cfg = make_config(demo_root, tmp_path / "store")  # shards of 4, several in flight at once
    report = build_targets(cfg)
    assert report["ok"]
    assert seen[0] == ("base", 0)  # the first shard's decode is reported before any teacher ran
    first_depth = next(i for i, (stage, _) in enumerate(seen) if stage == "depth")
    assert seen[first_depth][1] <= 4 * cfg.shard_size  # ... and its depth before the teachers of a second shard


@pytest.mark.parametrize("stage", ["text", "caption", "panoptic"])
def test_an_image_its_teacher_refuses_gets_an_empty_target_and_its_shard_goes_on(demo_root: Path, tmp_path: Path,
                                                                                 fakes, stage: str) -> None:
    from shards.reader import StoreReader

    cfg = make_config(demo_root, tmp_path / "store", **{f"{stage}_params": {"refuse": 397133}})
    report = build_targets(cfg)
    assert report["ok"], report["failures"]
    assert report["emptied_targets"] == [{"id": 397133, "stage": stage,
                                          "reason": f"image 397133: fake-{stage} refuses it"}]
    column = {"text": "text", "caption": "caption", "panoptic": "groups"}[stage]
    samples = {s["__key__"]: s for s in StoreReader(tmp_path / "store", "train2017", [column])}
    empty = samples["000000397133"]
    if stage == "text":
        assert empty["text.json"] == {"polygons": [], "scores": []} and not empty["text.png"].any()
    elif stage == "caption":
        assert empty["caption.json"]["captions"] == []
    else:
        assert not empty["groups.png"].any()  # void everywhere: unlabeled
    assert len(samples) == report["samples"]  # every other image of the shard is there too
    assert json.loads((tmp_path / "store" / "train2017" / "build-report.json").read_text())["emptied_targets"]


def test_a_second_build_of_the_same_split_is_refused_naming_the_first(built, demo_root: Path,
                                                                     fakes: dict[str, int]) -> None:
    import os
    import signal
    import subprocess
    import sys

    from pipeline.build import BuildError
    from shards.atomic import held

    out, _ = built
    lock = out / "train2017" / "build.lock"
    with held(lock, {"pid": 4242, "host": "node-7", "started": "2026-12-06T10:00:00+00:00", "ray_job": "raysubmit_1"}):
        with pytest.raises(BuildError, match=r"being built by pid 4242 on node-7 .*ray job stop raysubmit_1"):
            build_targets(make_config(demo_root, out))
    assert fakes == {}  # refused before any teacher ran
    # a holder killed with SIGKILL leaves the file, not the lock: the next build runs
    code = ("import sys, time; from shards.atomic import held\n"
            "with held(sys.argv[1], {'pid': 1}):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(BuildError, match="being built by pid 1 "):
            build_targets(make_config(demo_root, out))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert lock.exists() and build_targets(make_config(demo_root, out))["ok"]
    from shards.verify import verify_split

    assert not verify_split(out, "train2017").stray  # the lock file is the store's own
