"""`shards report`: the HTML page of a split, with its plots and contact sheets beside it."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shards.cli import main as shards_main
from shards.report import SAMPLED_SHARDS, build_report, sample_plan
from shards.synthetic import write_synthetic_store
from shards.taxonomy import GROUPS

SECTIONS = ["Samples", "Columns", "Depth", "Normals", "Panoptic classes", "Groups", "Text", "Captions and tokens",
            "Persons and joints", "Samples' contact sheets"]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "script", "link") and (a.get("src") or a.get("href")):
            self.refs.append(a.get("src") or a.get("href"))
        if tag == "a" and a.get("href") and not a["href"].startswith("#"):
            self.refs.append(a["href"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data.strip())
            self._in_h2 = False


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report_store")
    write_synthetic_store(root, "train2017", 24, 8, size=64, seed=3)
    return root


def _check_page(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert page.refs, "the page shows plots and sheets"
    for ref in page.refs:
        assert not re.match(r"[a-z]+:", ref), f"{ref}: the page must not load anything from the network"
        assert (out / ref).is_file(), f"{ref} is referenced but not written"
    return page


def test_the_report_of_a_store_has_every_section_and_every_file_it_references(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    build_report(store, "train2017", out)
    page = _check_page(out)
    assert page.headings == SECTIONS
    figures = json.loads((out / "report.json").read_text())
    assert figures["samples"] == 24 and figures["sampled"]["samples"] == 24  # a small split is read whole
    assert {c["column"] for c in figures["columns"]} >= {"base", "depth", "panoptic", "text", "tokens"}
    t = figures["targets"]
    assert 0 <= t["text"]["images_with_text"] <= 1 and t["tokens"]["filled_slots_per_image"] is not None
    assert set(t["groups_pixels"]) <= {"unlabeled", *GROUPS} and sum(t["groups_pixels"].values()) > 0
    assert len(list((out / "sheets").glob("*.jpg"))) == 6


def test_the_demo_store_report_names_its_teachers_and_rejections(tmp_path: Path, demo_root: Path, fakes) -> None:
    import pipeline_fakes
    from pipeline.build import build_targets

    store = tmp_path / "store"
    assert build_targets(pipeline_fakes.make_config(demo_root, store))["ok"]
    out = tmp_path / "report"
    assert shards_main(["--shards", str(store), "--split", "train2017", "report", "--out", str(out),
                        "--no-progress"]) == 0
    _check_page(out)
    figures = json.loads((out / "report.json").read_text())
    assert sum(figures["rejected_by_reason"].values()) == figures["rejected"] >= 1  # the demo's broken files
    teachers = {c["column"]: c["teacher"] for c in figures["columns"]}
    assert teachers["depth"] == "fake-depth" and teachers["caption"] == "fake-caption"
    text = (out / "index.html").read_text()
    assert "fake-depth" in text and "truncated" in text


def test_a_large_split_is_sampled_the_same_way_for_the_same_seed() -> None:
    shards = [(f"s{i:04d}", 1000) for i in range(118)]
    plan = sample_plan(shards, 2000, seed=0)
    assert len(plan) == SAMPLED_SHARDS and sum(n for _, n in plan) >= 2000 and all(n <= 1000 for _, n in plan)
    assert plan == sample_plan(shards, 2000, seed=0) and plan != sample_plan(shards, 2000, seed=1)
    assert sample_plan(shards[:2], 5000, seed=0) == shards[:2]  # small: all of it


def test_bad_arguments_are_one_line(store: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert shards_main(["--shards", str(store), "report", "--out", str(tmp_path / "file" / "r")]) == 2
    assert shards_main(["--shards", str(store), "report", "--out", str(tmp_path / "r"), "--max-samples", "0"]) == 2
    assert shards_main(["--shards", str(tmp_path / "nostore"), "report", "--out", str(tmp_path / "r2")]) == 2
    for line in capsys.readouterr().err.strip().splitlines():
        assert line.startswith("shards: error: ")


def test_a_misshapen_member_is_one_line_exit_1(tmp_path: Path, capsys) -> None:
    from shards.reader import StoreReader
    from shards.writer import ColumnWriter

    root = tmp_path / "s"
    write_synthetic_store(root, "train2017", 4, 4, size=32, seed=0)
    fp = StoreReader(root, "train2017").versions["pose"]
    writer = ColumnWriter(root / "train2017", "pose", fp)
    samples = [(s["__key__"], {"pose.json": {"persons": "many"}}) for s in StoreReader(root, "train2017", ["pose"])]
    writer.write_shard("train2017-000000", samples)  # recorded as written: only its content is wrong
    assert shards_main(["--shards", str(root), "report", "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "malformed" in err, err
