"""``pipeline status`` takes the teachers' fingerprints the build recorded instead of loading the teachers,
as long as their settings and weight files are unchanged (pipeline.teacher_record); a teacher it cannot
confirm so is reported unconfirmed, and loaded only with ``--recheck``."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

import pipeline_fakes
from pipeline.build import build_targets
from pipeline.cli import main
from pipeline.executors import TeacherFactory
from pipeline.stages import TEACHER_STAGES
from pipeline.status import split_status
from pipeline.teacher_record import teacher_settings
from pipeline_fakes import FakeDepth, make_config
from shards.schema import TEACHER_RECORD_NAME


@pytest.fixture()
def store(demo_root: Path, fakes: dict[str, int], tmp_path: Path):
    """A built demo split whose depth teacher names a local checkpoint file; (config, checkpoint path)."""
    weights = tmp_path / "depth.bin"
    weights.write_bytes(b"weights v1")
    cfg = make_config(demo_root, tmp_path / "store", depth_checkpoint=str(weights))
    assert build_targets(cfg)["ok"]
    pipeline_fakes.BUILT.clear()
    return cfg, weights


def requested(status: dict) -> dict[str, str]:
    return {r["stage"]: r["requested"] for r in status["stages"]}


def config_file(cfg, folder: Path) -> str:
    """The build's settings as a ``--config`` file: what a user passes status to compare against them."""
    path = folder / "build.json"
    path.write_text(json.dumps(cfg.to_json()))
    return str(path)


def test_status_after_a_build_loads_no_teacher(store) -> None:
    cfg, _ = store
    status = split_status(cfg)
    assert pipeline_fakes.BUILT == {}  # not one teacher was constructed
    assert status["teachers"] == {"recorded": list(TEACHER_STAGES), "loaded": [], "unconfirmed": []}
    assert all(r["state"] == "current" for r in status["stages"])
    rechecked = split_status(cfg, recheck=True)  # loading every teacher gives the same versions
    assert set(pipeline_fakes.BUILT) == {"fake-pose", "fake-depth", "fake-panoptic", "fake-text", "fake-caption"}
    assert rechecked["teachers"] == {"recorded": [], "loaded": list(TEACHER_STAGES), "unconfirmed": []}
    assert requested(rechecked) == requested(status)


def test_changed_settings_leave_that_teacher_unconfirmed(store) -> None:
    cfg, _ = store
    changed = dataclasses.replace(cfg, depth_params={"gain": 2.0})
    status = split_status(changed)
    assert pipeline_fakes.BUILT == {}  # no teacher is loaded without --recheck
    assert status["teachers"] == {"recorded": ["pose", "panoptic", "text", "caption"], "loaded": [],
                                  "unconfirmed": ["depth"]}
    rows = {r["stage"]: r for r in status["stages"]}
    assert rows["depth"]["state"] == rows["normals"]["state"] == "unconfirmed" and rows["text"]["state"] == "current"
    assert rows["depth"]["requested"] is None and rows["depth"]["active"] is not None
    rechecked = split_status(changed, recheck=True)  # loading it tells: another version is requested
    assert pipeline_fakes.BUILT["fake-depth"] == 1
    states = {r["stage"]: r["state"] for r in rechecked["stages"]}
    assert states["depth"] == states["normals"] == "stale" and states["text"] == "current"
    pipeline_fakes.BUILT.clear()
    # device and batch size do not enter a fingerprint, so they do not make status load a teacher
    pipeline_fakes.BUILT.clear()
    split_status(dataclasses.replace(cfg, batch_size=3))
    assert pipeline_fakes.BUILT == {}


def test_a_rewritten_weights_file_is_unconfirmed_again(store) -> None:
    cfg, weights = store
    weights.write_bytes(b"weights v2, longer")
    status = split_status(cfg)
    assert status["teachers"]["unconfirmed"] == ["depth"] and pipeline_fakes.BUILT == {}
    assert split_status(cfg, recheck=True)["teachers"]["loaded"] == list(TEACHER_STAGES)
    pipeline_fakes.BUILT.clear()
    os.utime(weights, ns=(1, 1))  # same size, other modification time: unconfirmed too
    assert split_status(cfg)["teachers"]["unconfirmed"] == ["depth"]


def test_a_damaged_record_means_unconfirmed(store) -> None:
    cfg, _ = store
    record = Path(cfg.out) / "train2017" / TEACHER_RECORD_NAME
    record.write_text("{not json")
    status = split_status(cfg)
    assert status["teachers"]["unconfirmed"] == list(TEACHER_STAGES) and pipeline_fakes.BUILT == {}
    assert {r["stage"]: r["state"] for r in status["stages"]} == {
        "base": "current", **{s: "unconfirmed" for s in ("pose", "depth", "normals", "panoptic", "groups", "text",
                                                          "caption", "tokens")}}
    assert all(r["state"] == "current" for r in split_status(cfg, recheck=True)["stages"])
    assert build_targets(cfg)["ok"]  # the next build writes it again
    assert [e["stage"] for e in json.loads(record.read_text())["teachers"]] == list(TEACHER_STAGES)


def test_status_command_says_where_the_versions_come_from(store, tmp_path: Path, capsys) -> None:
    cfg, _ = store
    settings = config_file(cfg, tmp_path)
    assert main(["status", "--config", settings]) == 0
    assert "pose, depth, panoptic, text, caption as recorded by a build" in capsys.readouterr().out
    assert main(["status", "--config", settings, "--depth-param", "gain=2"]) == 0
    out = capsys.readouterr().out
    assert "panoptic, text, caption as recorded by a build" in out
    assert "depth unconfirmed: no build recorded their fingerprint for these settings" in out
    assert "--recheck loads them, with these settings" in out and pipeline_fakes.BUILT == {}
    assert main(["status", "--config", settings, "--recheck"]) == 0
    assert "depth, panoptic, text, caption loaded now" in capsys.readouterr().out


def test_status_of_a_first_build_killed_before_its_manifest(store, capsys) -> None:
    cfg, _ = store
    split = Path(cfg.out) / cfg.split
    (split / "manifest.json").unlink()  # killed before its end: only the report it wrote when it started
    (split / "build-report.json").write_text(json.dumps({"ok": None, "config": cfg.to_json()}))
    assert main(["status", "--out", cfg.out]) == 0  # no settings: the report's are not taken
    out = capsys.readouterr().out
    assert "a first build started and has not finished" in out and "give its settings" in out
    assert pipeline_fakes.BUILT == {}
    assert main(["status", "--config", config_file(cfg, split.parent.parent)]) == 0  # the user's settings
    out = capsys.readouterr().out
    assert "not built" not in out and "depth, panoptic, text, caption as recorded by a build" in out
    assert {line.split()[1] for line in out.splitlines()[3:11]} == {"partial"}  # all done, none active yet


def test_status_of_some_stages_and_of_a_damaged_manifest(store, capsys) -> None:
    cfg, _ = store
    assert main(["status", "--out", cfg.out, "--stages", "depth"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[3:5]] == ["depth", "normals"]
    assert len(table) == 7 and table[5].startswith("no settings given")  # + the note and the recorded teachers
    assert main(["status", "--out", cfg.out, "--stages", "dpeth"]) == 2
    assert capsys.readouterr().err.startswith("pipeline: error: unknown stage 'dpeth'; stages are: base,")
    (Path(cfg.out) / cfg.split / "manifest.json").write_text('{"split": "train2017"')
    assert main(["status", "--out", cfg.out]) == 2
    err = capsys.readouterr().err.strip()
    assert "manifest.json: corrupt JSON" in err and "the next build-targets of the split rewrites it" in err
    assert len(err.splitlines()) == 1


def test_a_copied_store_keeps_its_record(store, tmp_path: Path) -> None:
    cfg, _ = store
    copy = tmp_path / "copy"
    shutil.copytree(cfg.out, copy)
    assert split_status(dataclasses.replace(cfg, out=str(copy)))["teachers"]["loaded"] == []


def test_hub_checkpoints_are_keyed_by_the_cached_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    refs = tmp_path / "models--org--model" / "refs"
    factory = TeacherFactory(FakeDepth, {"device": "cpu", "checkpoint": "org/model"})
    assert teacher_settings(factory)["files"] == {"checkpoint": None}  # not in the cache
    refs.mkdir(parents=True)
    (refs / "main").write_text("abc123\n")
    first = teacher_settings(factory)
    assert first["files"] == {"checkpoint": "abc123"}
    (refs / "main").write_text("def456\n")  # a newer download
    assert teacher_settings(factory) != first
    pinned = TeacherFactory(FakeDepth, {"checkpoint": "org/model", "revision": "v1"})
    (refs / "v1").write_text("0f0f\n")
    assert teacher_settings(pinned)["files"] == {"checkpoint": "0f0f"}


def test_status_after_a_build_that_switched_back_to_an_existing_version(store) -> None:
    cfg, _ = store
    other = dataclasses.replace(cfg, depth_params={"gain": 2.0})
    assert build_targets(other)["ok"]
    back = build_targets(cfg)  # every unit of the first version is still there: nothing runs, depth is activated
    assert back["ok"] and not any(st["run"] for st in back["stages"].values())
    assert main(["status", "--out", cfg.out]) == 0  # no settings: the active versions, the ones switched back to
    status = split_status(dataclasses.replace(cfg))
    assert all(r["state"] == "current" for r in status["stages"])


def test_status_of_a_gpu_build_where_no_gpu_is(store, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import torch

    cfg, _ = store
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    devices = []
    real_build = TeacherFactory.build
    monkeypatch.setattr(TeacherFactory, "build", lambda self: devices.append(self.kwargs["device"]) or real_build(self))
    status = split_status(dataclasses.replace(cfg, device="cuda"), recheck=True)
    assert status["teachers"]["loaded"] == list(TEACHER_STAGES) and devices == ["cpu"] * len(TEACHER_STAGES)
    assert all(r["state"] == "current" for r in status["stages"])


def test_status_says_incomplete_for_a_damaged_shard_of_the_active_version(store) -> None:
    cfg, _ = store
    split = Path(cfg.out) / "train2017"
    text = json.loads((split / "manifest.json").read_text())["columns"]["text"]
    tar = sorted((split / "text" / text).glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF
    tar.write_bytes(bytes(data))
    rows = {r["stage"]: r for r in split_status(cfg)["stages"]}
    assert rows["text"]["state"] == "incomplete" and rows["text"]["missing"] == 1
    assert rows["depth"]["state"] == "current"


def test_status_says_incomplete_for_a_damaged_vocabulary_and_a_build_repairs_it(store) -> None:
    cfg, _ = store
    vocab = Path(cfg.out) / "train2017" / "vocab.json"
    good = vocab.read_bytes()
    vocab.write_text("[]")
    rows = {r["stage"]: r for r in split_status(cfg)["stages"]}
    assert rows["tokens"]["state"] == "incomplete" and rows["caption"]["state"] == "current"
    assert build_targets(cfg)["ok"]
    assert vocab.read_bytes() == good
    assert {r["stage"]: r["state"] for r in split_status(cfg)["stages"]}["tokens"] == "current"


def test_a_package_without_metadata_is_recorded_by_its_source_version(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """detectron2 installed as sources (no dist-info) still has its version recorded, read without importing it."""
    import sys

    from pipeline import teacher_record

    package = tmp_path / "detectron2"
    package.mkdir()
    (package / "__init__.py").write_text('raise ImportError("imported")\n__version__ = "0.7.2"\n')
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delitem(sys.modules, "detectron2", raising=False)
    monkeypatch.setattr(teacher_record, "PACKAGES", ("detectron2",))
    from importlib.metadata import PackageNotFoundError

    def no_metadata(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr("importlib.metadata.version", no_metadata)
    assert teacher_record._versions() == {"detectron2": "0.7.2"}


def test_a_build_loads_no_teacher_whose_units_are_all_done(store) -> None:
    cfg, weights = store
    calls = dict(pipeline_fakes.CALLS)
    again = build_targets(dataclasses.replace(cfg, stages=("depth",)))  # a finished --stages depth, run again
    assert again["ok"] and pipeline_fakes.BUILT == {} and pipeline_fakes.CALLS == calls
    forced = build_targets(dataclasses.replace(cfg, stages=("depth",), force=True))
    assert forced["ok"] and pipeline_fakes.BUILT == {"fake-depth": 1}  # --force reruns it: loaded
    pipeline_fakes.BUILT.clear()
    changed = build_targets(dataclasses.replace(cfg, depth_params={"gain": 2.0}))  # another version to build
    assert changed["ok"] and pipeline_fakes.BUILT == {"fake-depth": 1}  # only the teacher with work is loaded
