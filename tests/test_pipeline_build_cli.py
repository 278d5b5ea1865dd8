"""The ``pipeline`` CLI: bad input is one line and exit 2 before any work; config precedence; listings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipeline_fakes
from pipeline.cli import build_parser, main, resolve_config
from shards.manifest import load_manifest
from teachers.registry import list_teachers

FAKE_FLAGS = pipeline_fakes.FLAGS



def run_bad(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path, executor: str = "local") -> str:
    code = main(["build-targets", "--executor", executor, "--no-progress", "--out", str(out), "--device", "cpu",
                 *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and err.startswith("pipeline: error: "), err
    assert not out.exists(), "no work may start on bad input"
    return err


def test_missing_coco_root(tmp_path: Path, capsys) -> None:
    err = run_bad(["--coco-root", str(tmp_path / "nowhere")], capsys, tmp_path / "out")
    assert "COCO root" in err and "nowhere" in err and "--coco-root" in err


def test_unknown_split(demo_root: Path, tmp_path: Path, capsys) -> None:
    err = run_bad(["--coco-root", str(demo_root), "--split", "train2099"], capsys, tmp_path / "out")
    assert "'train2099'" in err and "train2017" in err and "val2017" in err


def test_unknown_teacher(demo_root: Path, tmp_path: Path, capsys, fakes) -> None:
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--panoptic-teacher", "segment-everything"],
                  capsys, tmp_path / "out")
    assert "'segment-everything'" in err and "mask2former" in err


def test_teacher_of_the_wrong_task(demo_root: Path, tmp_path: Path, capsys, fakes) -> None:
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--depth-teacher", "caption-gt"],
                  capsys, tmp_path / "out")
    assert "caption teacher, not a depth one" in err


def test_checkpoint_that_does_not_load(demo_root: Path, tmp_path: Path, capsys, fakes) -> None:
    bad = tmp_path / "broken-det.onnx"
    bad.write_bytes(b"not an onnx model")
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--text-teacher", "rapidocr",
                   "--text-checkpoint", str(bad)], capsys, tmp_path / "out")
    assert "rapidocr" in err and "broken-det.onnx" in err


@pytest.mark.timeout(120)
def test_on_ray_teachers_load_in_the_actors_and_a_bad_checkpoint_is_still_one_line(
        demo_root: Path, tmp_path: Path, capsys, fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))  # the actors import the fakes
    bad = tmp_path / "broken-det.onnx"
    bad.write_bytes(b"not an onnx model")
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--text-teacher", "rapidocr", "--num-cpus", "1",
                   "--text-checkpoint", str(bad), "--depth-param", "gain=2"], capsys, tmp_path / "out", "ray")
    assert "rapidocr" in err and "broken-det.onnx" in err
    assert pipeline_fakes.BUILT == {}  # no teacher was built in this process: the actor built them


def test_unknown_stage_and_teacher_parameter(demo_root: Path, tmp_path: Path, capsys, fakes) -> None:
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--stages", "depth,nromals"], capsys, tmp_path / "out")
    assert "'nromals'" in err
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--depth-param", "colour=3"], capsys, tmp_path / "out")
    assert "fake-depth" in err and "colour" in err


def test_val_split_without_train_vocabulary(demo_root: Path, tmp_path: Path, capsys, fakes) -> None:
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--split", "val2017"], capsys, tmp_path / "out")
    assert "vocab.json" in err and "--split train2017 first" in err


def test_config_precedence_defaults_file_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "build.json"
    cfg_file.write_text(json.dumps({"shard_size": 3, "size": 48, "depth_params": {"gain": 2}, "stages": ["depth"]}))
    args = build_parser().parse_args(["build-targets", "--config", str(cfg_file), "--size", "64",
                                      "--text-param", "threshold=0.5", "--text-param", "name=x"])
    del args.func
    cfg = resolve_config(args)
    assert (cfg.shard_size, cfg.size, cfg.batch_size) == (3, 64, 8)  # file, flag, default
    assert dict(cfg.depth_params) == {"gain": 2} and dict(cfg.text_params) == {"threshold": 0.5, "name": "x"}
    assert cfg.stages == ("depth",)
    # a --x-param changes that key of the file's x_params and keeps the others
    args = build_parser().parse_args(["build-targets", "--config", str(cfg_file), "--depth-param", "input_size=70",
                                      "--depth-param", "gain=3"])
    del args.func
    assert dict(resolve_config(args).depth_params) == {"gain": 3, "input_size": 70}
    cfg_file.write_text(json.dumps({"shard_sise": 3}))
    args = build_parser().parse_args(["build-targets", "--config", str(cfg_file)])
    del args.func
    with pytest.raises(ValueError, match="shard_sise"):
        resolve_config(args)


def test_teachers_lists_the_registry(capsys) -> None:
    assert main(["teachers"]) == 0
    out = capsys.readouterr().out
    for name in list_teachers():
        assert name in out


def test_build_and_status_commands(demo_root: Path, tmp_path: Path, capsys, fakes) -> None:
    flags = ["--coco-root", str(demo_root), "--out", str(tmp_path / "out"), "--size", "64", "--shard-size", "8",
             "--device", "cpu", *FAKE_FLAGS]
    assert main(["build-targets", "--executor", "local", "--no-progress", "--stages", "text", *flags]) == 0
    out = capsys.readouterr().out
    assert "text" in out and "base" in out and "rejected" in out
    assert set(load_manifest(tmp_path / "out" / "train2017").columns) == {"base", "text"}
    assert main(["status", "--out", str(tmp_path / "out")]) == 0  # the other settings come from the manifest
    lines = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[3:]}
    assert lines["text"] == "current" and lines["base"] == "current" and lines["depth"] == "not"


def test_progress_lines_off_a_terminal_and_summary_table(capsys) -> None:
    from pipeline.progress import NOT_RUN, Progress, summary_table

    with Progress({"depth": (2, 10), "normals": (0, 0)}, enabled=True, header="teachers: depth here") as progress:
        progress.update("depth", 5)
        progress.update("depth", 4)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "teachers: depth here"
    assert [line.split(" img/s")[0].rsplit(",", 1)[0] for line in err[1:]] == ["depth: 1/2 units, 5 images",
                                                                               "depth: 2/2 units, 9 images"]
    stage = {"images": 9, "seconds": 3.0, "images_per_s": 3.0, "run": 2, "skipped": 1, "failed": 1, "rejected": 0,
             "active": None}
    table = summary_table({"split": "val2017", "samples": 9, "rejected": 1, "image_ids": 10, "wall_seconds": 4.0,
                           "executor": "local", "stages": {"depth": stage}, "teachers": {"depth": "in-process on cpu"},
                           "setup_seconds": 1.5, "failures": [
                               {"stage": "normals", "shard": "val2017-000001", "error": NOT_RUN},
                               {"stage": "depth", "shard": "val2017-000001", "error": "boom\ntrace"}]})
    rows = table.splitlines()
    assert rows[2].split() == ["depth", "9", "3.0", "3.0", "2", "1", "1", "0", "-"]
    assert rows[-2] == "teachers: depth in-process on cpu"  # also with --no-progress, which prints no header
    assert "4.0 s on local (1.5 s of it checking inputs and loading teachers)" in rows[-1]
    assert rows[-1].endswith("1 unit(s) failed (1 more not run: their input failed), first depth val2017-000001: boom")


def test_glove_file_in_the_wrong_format_fails_before_any_work(demo_root: Path, tmp_path: Path, capsys,
                                                              fakes) -> None:
    not_glove = tmp_path / "notes.txt"
    not_glove.write_text("# these are notes, not vectors\nsecond line\n")
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--glove", str(not_glove)], capsys, tmp_path / "out")
    assert "notes.txt: not a GloVe text file" in err
    assert not fakes  # no teacher was called
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad, needle", [("the 0.1 x 0.3\n", "line 3 ('the') holds a value that is not a number"),
                                         ("the 0.1\n", "line 3 ('the') has 1 values, line 1 has 3")])
def test_a_damaged_glove_line_fails_before_any_work(demo_root: Path, tmp_path: Path, capsys, fakes, bad: str,
                                                    needle: str) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("a 0.1 0.2 0.3\nof -1.5e-3 2 3\n" + bad + "to 1 2 3\n")
    err = run_bad(["--coco-root", str(demo_root), *FAKE_FLAGS, "--glove", str(glove)], capsys, tmp_path / "out")
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not fakes  # no teacher was loaded or called
    assert not (tmp_path / "out").exists()
