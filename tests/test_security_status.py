"""Untrusted stores and ``pipeline status``: a store describes data, it never chooses a teacher, a checkpoint, a
config file or a path. A store whose manifest (or first build's report) names the detectron2 teacher with a
config file and a checkpoint shipped inside the store, both built to run ``touch MARKER`` when loaded unsafely,
gets its status told without any teacher being looked up or constructed; the user's own settings (and
``--recheck``) still work."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

import pipeline_fakes
from pipeline.build import build_targets
from pipeline.cli import main
from pipeline.executors import TeacherFactory
from pipeline.stages import STAGES, TEACHER_STAGES
from pipeline_fakes import make_config
from shards.schema import BUILD_REPORT_NAME

SPLIT = "train2017"
EVIL_TEACHER = "detectron2-panoptic-fpn"
FAKE_FLAGS = pipeline_fakes.FLAGS


def yaml_payload(marker: Path) -> str:
    return f'!!python/object/apply:os.system ["touch {marker}"]\n'


class _Payload:
    """Pickled, it runs ``touch marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def test_the_payloads_fire_when_loaded_unsafely(tmp_path: Path) -> None:
    """The attack files below are real: loaded the unsafe way, each runs its command (so a marker that stays
    absent means nothing loaded them so)."""
    import yaml

    probe = tmp_path / "probe-yaml"
    yaml.unsafe_load(yaml_payload(probe))
    assert probe.exists()
    probe = tmp_path / "probe-pickle"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()


@pytest.fixture()
def attack(demo_root: Path, fakes: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store built with the fake teachers whose manifest and build report then say the last build used the
    detectron2 teacher with a config file and weights inside the store. Returns (build config, marker, calls):
    ``calls`` records every teacher looked up in the registry by name, created through it, built by a
    factory or constructed at all."""
    cfg = make_config(demo_root, tmp_path / "store")
    assert build_targets(cfg)["ok"]
    split = tmp_path / "store" / SPLIT
    marker = tmp_path / "MARKER"
    (split / "evil.yaml").write_text(yaml_payload(marker))
    (split / "evil.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    evil = {**cfg.to_json(), "panoptic_teacher": EVIL_TEACHER, "panoptic_checkpoint": str(split / "evil.pkl"),
            "panoptic_params": {"config_file": str(split / "evil.yaml")}, "device": "cpu"}
    doc = json.loads((split / "manifest.json").read_text())
    doc["config"] = evil
    (split / "manifest.json").write_text(json.dumps(doc))
    report = json.loads((split / BUILD_REPORT_NAME).read_text())
    (split / BUILD_REPORT_NAME).write_text(json.dumps({**report, "config": evil}))

    from teachers import registry
    from teachers.base import Teacher

    calls: dict[str, list[Any]] = {"looked_up": [], "created": [], "built": [], "constructed": []}
    real_class, real_create, real_build, real_init = (registry.teacher_class, registry.create_teacher,
                                                      TeacherFactory.build, Teacher.__init__)

    def teacher_class(name: str) -> type:
        calls["looked_up"].append(name)
        return real_class(name)

    def create_teacher(name: str, **kwargs: Any) -> Any:
        calls["created"].append((name, kwargs))
        return real_create(name, **kwargs)

    def build(self: TeacherFactory) -> Any:
        calls["built"].append((getattr(self.cls, "name", self.cls.__name__), dict(self.kwargs)))
        return real_build(self)

    def init(self: Teacher, **kwargs: Any) -> None:
        calls["constructed"].append(type(self).name)
        real_init(self, **kwargs)

    monkeypatch.setattr(registry, "teacher_class", teacher_class)
    monkeypatch.setattr(registry, "create_teacher", create_teacher)
    monkeypatch.setattr(TeacherFactory, "build", build)
    monkeypatch.setattr(Teacher, "__init__", init)
    pipeline_fakes.BUILT.clear()
    return cfg, marker, calls


def user_flags(cfg) -> list[str]:
    """The build's settings given as the user's own flags."""
    return ["--coco-root", cfg.coco_root, "--out", cfg.out, "--split", cfg.split, "--size", str(cfg.size),
            "--shard-size", str(cfg.shard_size), "--device", "cpu", "--glove", cfg.glove, *FAKE_FLAGS]


def states(out: str) -> dict[str, str]:
    """stage -> state of the table ``pipeline status`` printed."""
    names = {s.name for s in STAGES}
    rows = [line.split("  ") for line in out.splitlines()]
    return {r[0].strip(): next(c.strip() for c in r[1:] if c.strip()) for r in rows if r[0].strip() in names}


def test_status_takes_no_teacher_config_file_or_checkpoint_from_the_store(attack, capsys) -> None:
    cfg, marker, calls = attack
    assert main(["status", "--out", cfg.out, "--split", SPLIT]) == 0
    out = capsys.readouterr().out
    assert not marker.exists()
    assert calls == {"looked_up": [], "created": [], "built": [], "constructed": []}
    assert pipeline_fakes.BUILT == {}
    assert states(out) == {s.name: "current" for s in STAGES}  # told from the store's data, without loading
    assert "no settings given" in out
    # shown only
    assert f"the manifest says the last build used: pose fake-pose, depth fake-depth, panoptic {EVIL_TEACHER}," in out
    assert "evil" not in out


def test_a_first_build_report_chooses_nothing_either(attack, capsys) -> None:
    cfg, marker, calls = attack
    (Path(cfg.out) / SPLIT / "manifest.json").unlink()  # a killed first build: only its report says what it used
    assert main(["status", "--out", cfg.out]) == 0
    out = capsys.readouterr().out
    assert "a first build started and has not finished" in out and "give its settings" in out
    assert not marker.exists() and calls == {"looked_up": [], "created": [], "built": [], "constructed": []}


def test_the_users_flags_and_the_teacher_record_confirm_every_stage(attack, capsys) -> None:
    cfg, marker, calls = attack
    assert main(["status", *user_flags(cfg)]) == 0
    out = capsys.readouterr().out
    assert states(out) == {s.name: "current" for s in STAGES}
    assert "teacher versions: pose, depth, panoptic, text, caption as recorded by a build" in out
    assert calls["created"] == calls["built"] == calls["constructed"] == [] and pipeline_fakes.BUILT == {}
    assert EVIL_TEACHER not in calls["looked_up"] and set(calls["looked_up"]) <= set(pipeline_fakes.FAKES)
    assert not marker.exists()


def test_an_unrecorded_teacher_is_unconfirmed_and_recheck_loads_the_users_settings(attack, capsys) -> None:
    cfg, marker, calls = attack
    flags = [*user_flags(cfg), "--depth-param", "gain=2"]
    assert main(["status", *flags]) == 0
    out = capsys.readouterr().out
    table = states(out)
    assert table["depth"] == table["normals"] == "unconfirmed" and table["panoptic"] == table["text"] == "current"
    depth_row = next(line for line in out.splitlines() if line.startswith("depth "))
    assert depth_row.split()[3:] == ["?", "?", "?", "?"]  # requested, done, stale, missing: unknown
    assert "depth unconfirmed" in out and "--recheck loads them, with these settings" in out
    assert calls["built"] == calls["constructed"] == [] and pipeline_fakes.BUILT == {}

    assert main(["status", *flags, "--recheck"]) == 0
    out = capsys.readouterr().out
    table = states(out)
    assert table["depth"] == table["normals"] == "stale" and table["panoptic"] == "current"
    assert "pose, depth, panoptic, text, caption loaded now" in out
    built = dict(calls["built"])
    assert set(built) == {"fake-pose", "fake-depth", "fake-panoptic", "fake-text", "fake-caption"}  # the user's
    assert built["fake-depth"]["gain"] == 2  # with the user's parameters
    assert "checkpoint" not in built["fake-panoptic"] and "config_file" not in built["fake-panoptic"]
    assert sorted(calls["constructed"]) == sorted(built) and EVIL_TEACHER not in calls["looked_up"]
    assert not marker.exists()


def test_recheck_without_settings_is_one_line(attack, capsys) -> None:
    cfg, marker, calls = attack
    assert main(["status", "--out", cfg.out, "--recheck"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("pipeline: error: --recheck loads the teachers of the settings you "
                                              "give, and none were given")
    assert captured.out == ""
    assert calls == {"looked_up": [], "created": [], "built": [], "constructed": []} and not marker.exists()


def test_a_user_config_file_is_used_and_the_manifests_is_not(attack, tmp_path: Path, capsys) -> None:
    """The same settings from the user's --config file: confirmed from the record, nothing loaded; the
    manifest's teacher (which no build recorded) plays no part."""
    cfg, marker, calls = attack
    settings = tmp_path / "mine.json"
    settings.write_text(json.dumps(cfg.to_json()))
    assert main(["status", "--config", str(settings), "--stages", "panoptic"]) == 0
    out = capsys.readouterr().out
    assert states(out) == {"panoptic": "current", "groups": "current"}
    assert "teacher versions: pose, depth, panoptic, text, caption as recorded by a build" in out
    assert calls["built"] == calls["constructed"] == [] and EVIL_TEACHER not in calls["looked_up"]
    assert not marker.exists()


def test_store_strings_cannot_drive_the_terminal(attack, capsys) -> None:
    cfg, _, _ = attack
    manifest = Path(cfg.out) / SPLIT / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["config"]["depth_teacher"] = "x\x1b]0;owned\x07\x1b[2J" + "y" * 200
    manifest.write_text(json.dumps(doc))
    assert main(["status", "--out", cfg.out]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    line = next(x for x in out.splitlines() if x.startswith("the manifest says"))
    assert "depth x?]0;owned??[2Jyyy" in line and len(line) < 300


def test_teacher_stages_cover_the_record(attack) -> None:
    """The fixture's store records every teacher stage (the tests above rely on it)."""
    cfg, _, _ = attack
    record = json.loads((Path(cfg.out) / SPLIT / "teachers.json").read_text())
    assert {e["stage"] for e in record["teachers"]} == set(TEACHER_STAGES)
