"""The one Ray end-to-end test: a local Ray cluster builds the demo split, survives a dead teacher actor, and
writes the same bytes as the in-process executor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline_fakes
from pipeline_fakes import make_config
from pipeline.build import build_targets
from pipeline_store_checks import check_split, tar_files

TESTS = Path(__file__).resolve().parent


@pytest.mark.timeout(300)
def test_ray_build_matches_local_and_survives_a_dead_actor(demo_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    pipeline_fakes.register_for_test(monkeypatch)
    # Ray workers are started by the local cluster with this environment, so they can import the fakes.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    marker = tmp_path / "depth-actor-died"
    on_ray = build_targets(make_config(demo_root, tmp_path / "ray", executor="ray", num_cpus=2,
                                       depth_params={"die_once": str(marker)}))
    assert marker.exists(), "the depth actor was killed once"
    assert on_ray["ok"] and on_ray["executor"] == "ray", on_ray["failures"]
    counts = check_split(tmp_path / "ray", demo_root, "train2017")
    assert on_ray["samples"] == counts["samples"]
    assert all(st["run"] == st["units"] for st in on_ray["stages"].values())

    local = build_targets(make_config(demo_root, tmp_path / "local"))
    assert local["ok"] and local["samples"] == on_ray["samples"]
    assert tar_files(tmp_path / "ray" / "train2017") == tar_files(tmp_path / "local" / "train2017")
