"""Training on several splits of one store, each drawn as often as its weight says (`--train-split A:3,B:1`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shards.manifest import StoreError
from shards.reader import StoreReader
from shards.synthetic import write_synthetic_store
from student import cli
from student.data import MixedReader, open_mixed, parse_mix

SIZE = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mix_store")
    write_synthetic_store(root, "train2017", 24, 8, size=SIZE, seed=0)
    write_synthetic_store(root, "factory", 16, 8, size=SIZE, seed=0)  # the same vocabulary: seed 0
    write_synthetic_store(root, "val2017", 8, 4, size=SIZE, seed=1)  # another vocabulary
    return root


def test_parse_mix() -> None:
    assert parse_mix("train2017") == {"train2017": 1.0}
    assert parse_mix("train2017:3, factory:1") == {"train2017": 3.0, "factory": 1.0}
    for bad in ("a:0", "a:-1", "a:x", "a:1,a:2", "", "a:nan", ":2"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_splits_are_drawn_in_the_asked_proportion(store: Path) -> None:
    readers = {s: StoreReader(store, s, ["base"], resampled=True, seed=0, decode=False)
               for s in ("train2017", "factory")}
    mixed = MixedReader(readers, {"train2017": 3.0, "factory": 1.0}, seed=0)
    counts = {"train2017": 0, "factory": 0}
    for i, sample in enumerate(mixed):
        counts[sample["__split__"]] += 1
        if i == 3999:
            break
    share = counts["train2017"] / 4000
    assert share == pytest.approx(0.75, abs=0.03), counts
    mixed.set_epoch(1)  # another epoch, another (seeded) draw
    again = [s["__split__"] for s, _ in zip(mixed, range(50))]
    mixed.set_epoch(1)
    assert again == [s["__split__"] for s, _ in zip(mixed, range(50))]


def test_splits_with_another_vocabulary_are_refused(store: Path) -> None:
    with pytest.raises(StoreError, match="different vocab.json"):
        open_mixed(store, {"train2017": 1.0, "val2017": 1.0}, batch_size=2)
    with pytest.raises(StoreError, match="has no split"):
        open_mixed(store, {"train2017": 1.0, "nosuch": 1.0}, batch_size=2)


def test_student_trains_on_two_splits(store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    common = ["train", "--shards", str(store), "--train-split", "train2017:3,factory:1", "--model", "tiny",
              "--epochs", "1", "--batch-size", "2", "--workers", "0", "--no-progress", "--val-steps", "1"]
    assert cli.main([*common, "--steps-per-epoch", "2", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["state"] == "done"
    assert cli.main([*common, "--out", str(tmp_path / "r2")]) == 2  # a mix is drawn: it needs --steps-per-epoch
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--steps-per-epoch" in err, err
