"""A build killed with SIGKILL halfway, then run again, ends byte-identical to an uninterrupted one and does
not redo the units that had finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeline_fakes
from pipeline_fakes import make_config
from pipeline.build import build_targets
from pipeline.coco import load_split
from pipeline_store_checks import check_split, tar_files
from shards.writer import ColumnWriter

TESTS = Path(__file__).resolve().parent


def _finished(split_path: Path) -> dict[str, set[str]]:
    """(column -> finished shard names) of every column version on disk, checked like the build checks."""
    out: dict[str, set[str]] = {}
    for record in split_path.glob("*/*/column.json"):
        col, fp = record.parent.parent.name, record.parent.name
        writer = ColumnWriter(split_path, col, fp)
        out[col] = {sh for sh in writer.records() if writer.is_done(sh)}
    return out


def test_sigkill_then_resume_is_byte_identical(demo_root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline_fakes.register_for_test(monkeypatch)
    killed, ref = tmp_path / "killed", tmp_path / "reference"
    cfg = make_config(demo_root, killed, shard_size=2)
    args = ["build-targets", "--executor", "local", "--no-progress", "--coco-root", str(demo_root),
            "--out", str(killed),
            "--shard-size", "2", "--size", "64", "--device", "cpu", "--glove", cfg.glove,
            *pipeline_fakes.FLAGS, "--depth-param", "delay=0.15"]  # slow enough to be caught halfway
    code = ("import sys, pipeline_fakes; pipeline_fakes.register(); from pipeline.cli import main; "
            f"sys.exit(main({args!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    split = killed / "train2017"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_finished(split).get("depth", ())) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the build ended before it could be killed: {proc.communicate()[1].decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = _finished(split)
    n_shards = -(-len(load_split(demo_root, "train2017")) // 2)
    assert 2 <= len(done["depth"]) < n_shards, "killed halfway"
    assert not (split / "manifest.json").exists()  # nothing was activated: the base column was not complete

    pipeline_fakes.CALLS.clear()
    resumed = build_targets(make_config(demo_root, killed, shard_size=2))
    assert resumed["ok"]
    for stage, st in resumed["stages"].items():
        assert st["skipped"] == len(done.get(stage, ())), stage  # finished units are not redone
        assert st["run"] == n_shards - st["skipped"], stage
    depth_fp = next(p.parent.name for p in split.glob("depth/*/column.json"))
    records = ColumnWriter(split, "depth", depth_fp).records()
    done_images = sum(records[sh].count for sh in done["depth"])
    assert pipeline_fakes.CALLS["fake-depth"] == resumed["samples"] - done_images  # only unfinished shards predicted

    reference = build_targets(make_config(demo_root, ref, shard_size=2))
    assert reference["ok"]
    check_split(killed, demo_root, "train2017")
    assert tar_files(split) == tar_files(ref / "train2017")
    for name in ("rejected.jsonl", "vocab.json"):
        assert (split / name).read_bytes() == (ref / "train2017" / name).read_bytes(), name
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (split, ref / "train2017")]
    for m in manifests:
        m.pop("config")  # holds the --out path, which differs
    assert manifests[0] == manifests[1]


@pytest.mark.timeout(180)
def test_a_killed_driver_leaves_no_process_of_its_ray_cluster(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from pipeline.processes import descendants, start_time

    code = ("import os, sys, time; from pipeline.executors import TeacherFactory; "
            "from pipeline.ray_executor import RayExecutor; "
            "import pipeline_fakes; ex = RayExecutor(num_cpus=1, retries=0); "
            "ex.start({'text': TeacherFactory(pipeline_fakes.FakeText)}); print('up', flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        started = descendants(proc.pid)  # the cluster's GCS, raylet, agents, the teacher actor...
        assert len(started) >= 4, started
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = [(p, s) for p, s in started if start_time(p) == s]
            if not alive:
                break
            time.sleep(1.0)
        assert not alive, f"still running 30 s after the driver was killed: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
