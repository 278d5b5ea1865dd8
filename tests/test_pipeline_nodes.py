"""The check that every node of a Ray cluster sees the build's files and code at the driver's paths."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

import pipeline
from pipeline.nodes import NodeCheck, check_nodes, code_digest, probe


class _TwoNodes:
    """An executor whose second "node" sees other paths: its check is rewritten before the probe runs there."""

    def __init__(self, **other: object) -> None:
        self.other = other

    def on_every_node(self, fn, check: NodeCheck) -> list:
        return [fn(check, 0), fn(dataclasses.replace(check, **self.other), 1), RuntimeError("node lost\nmore")]


def test_a_node_that_sees_other_paths_is_named_with_what_it_lacks(tmp_path: Path) -> None:
    image = tmp_path / "coco" / "train2017" / "1.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"jpeg")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"w")
    split = tmp_path / "store" / "train2017"
    elsewhere = tmp_path / "node1-store" / "train2017"  # the second node's own disk at the store's path
    problem = check_nodes(_TwoNodes(image="/nowhere/1.jpg", store_split=str(elsewhere), files=("/nowhere/w.pth",),
                                    code="another"), str(image), split, [str(weights)])
    assert problem is not None and problem.startswith("not every node of the Ray cluster can run this build as the "
                                                      "driver sees it (the COCO root, the store and local weight")
    host = os.uname().nodename
    assert (f"node {host}: no image /nowhere/1.jpg; no /nowhere/w.pth; its Python imports other code of this "
            "project than the driver") in problem
    assert f"writes to a store folder {split} that the driver does not see" in problem
    assert "node 2: did not answer (RuntimeError: node lost)" in problem
    assert problem.count(" | ") == 1  # two nodes lack something; the first node is fine
    assert not list(split.glob(".node-check-*"))  # the driver removes the sentinels it found


def test_nodes_that_see_everything_pass_and_in_process_executors_are_not_probed(tmp_path: Path) -> None:
    image = tmp_path / "1.jpg"
    image.write_bytes(b"jpeg")

    class OneNode:
        def on_every_node(self, fn, check):
            return [fn(check, 0)]

    assert check_nodes(OneNode(), str(image), tmp_path / "store" / "s", []) is None
    assert not list((tmp_path / "store" / "s").glob(".node-check-*"))
    from pipeline.executors import LocalExecutor

    assert check_nodes(LocalExecutor(), "/nowhere.jpg", tmp_path / "x", ["/nowhere"]) is None
    assert probe(NodeCheck(str(image), str(tmp_path / "s2"), (), code_digest(), "t"), 0)[1] == []


@pytest.mark.timeout(120)
def test_ray_workers_importing_another_copy_of_the_project_are_refused(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from pipeline.ray_executor import RayExecutor

    # Ray puts the driver's working folder first on its workers' path: a source folder with another version
    # of the project there wins over the installed one
    src = Path(pipeline.__file__).parent.parent
    for name in ("pipeline", "shards", "teachers"):
        shutil.copytree(src / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pipeline" / "units.py").write_text((src / "pipeline" / "units.py").read_text() + "\n# changed\n")
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "1.jpg"
    image.write_bytes(b"jpeg")
    ex = RayExecutor(num_cpus=1, retries=0)
    try:
        problem = check_nodes(ex, str(image), tmp_path / "store" / "train2017", [])
    finally:
        ex.close()
        if ray.is_initialized():
            ray.shutdown()
    assert problem is not None and "its Python imports other code of this project than the driver" in problem
    assert problem.startswith("not every node of the Ray cluster can run this build as the driver sees it: node ")


def test_a_cluster_that_refuses_the_driver_is_one_line_naming_token_authentication(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from pipeline.executors import ClusterConnectionError
    from pipeline.ray_executor import RayExecutor

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")  # what any local ray.init() leaves behind
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)

    def refused(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6390.\nSee the logs.")

    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ClusterConnectionError) as err:
        RayExecutor(address="127.0.0.1:6390").on_every_node(probe)
    assert str(err.value).startswith("cannot join the Ray cluster at 127.0.0.1:6390: Failed to connect to Ray "
                                     "cluster at 127.0.0.1:6390.; a head started with `ray start`")
    assert "set RAY_AUTH_MODE=token" in str(err.value) and "\n" not in str(err.value)
