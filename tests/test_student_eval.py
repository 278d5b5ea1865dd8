"""`student eval`: HDM / MSE per modality and token cosines against the store's targets."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from shards.synthetic import write_synthetic_store
from shards_stores import set_pose
from student import eval as student_eval
from student.checkpoint import save_checkpoint
from student.config import ModelConfig
from student.data import make_loader, open_split, to_device
from student.metrics import HDM_THRESHOLDS
from student.model import YMapNet

SIZE = 64
SPLIT = "val2017"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("store")
    write_synthetic_store(root, SPLIT, num_samples=7, shard_size=3, size=SIZE, seed=3)
    return str(root)


class PerfectModel(torch.nn.Module):
    """Returns, for each image of the store, exactly its targets (looked up by the image bytes)."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self.table = {}
        for host in make_loader(open_split(root, SPLIT, train=False, batch_size=1), 0):
            batch = to_device({k: v for k, v in host.items() if isinstance(v, torch.Tensor)}, torch.device("cpu"))
            self.table[batch["images"][0].numpy().tobytes()] = (batch["targets"][0], batch["glove"][0])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        found = [self.table[im.numpy().tobytes()] for im in images]
        return {"maps": torch.stack([f[0] for f in found]), "tokens": torch.stack([f[1] for f in found])}


def test_perfect_prediction_scores_hdm_one_and_mse_zero(store: str) -> None:
    result = student_eval.evaluate(PerfectModel(store), store, SPLIT, batch_size=3, progress=False)
    assert result["samples"] == 7
    assert set(result["modalities"]) == set(student_eval.MODALITIES)
    for name, row in result["modalities"].items():
        for t in HDM_THRESHOLDS:
            assert row[f"hdm@{t}"] == 1.0, (name, t)
        assert row["mse"] == 0.0, name
    cos = [c for c in result["tokens"]["cos_nonempty"] if c is not None]
    assert cos and all(abs(c - 1.0) < 1e-5 for c in cos)
    for name in ("joints", "text", "groups"):
        assert result["modalities"][name]["iou"] == 1.0, name
    learn = result["learning"]  # the targets' own maps, grouped into people, find every annotated person
    assert learn["people_annotated"] > 0 and learn["people_found"] == learn["people_annotated"]
    assert learn["pck@0.1"] >= 0.95  # grouping perfect maps can still miss a joint (a peak on the border)


def test_an_all_background_model_scores_high_hdm_but_no_iou_and_no_people(store: str) -> None:
    class Background(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            b = images.shape[0]
            return {"maps": torch.full((b, 44, SIZE, SIZE), -1.0), "tokens": torch.zeros(b, 8, 300)}

    result = student_eval.evaluate(Background(), store, SPLIT, batch_size=3, progress=False)
    assert result["modalities"]["joints"]["hdm@0.1"] > 0.9  # what the paper's metric says of it
    assert result["modalities"]["joints"]["iou"] == 0.0 and result["modalities"]["groups"]["iou"] == 0.0
    assert result["learning"]["pck@0.1"] == 0.0 and result["learning"]["people_found"] == 0


def test_heatmap_sizes_come_from_the_checkpoint_or_the_recipe_limits() -> None:
    from student.config import TrainConfig
    from student.recipe import Recipe

    extra = {"target_sizes": {"heatmap_radius": 17, "paf_width": 4},
             "train_cfg": TrainConfig(recipe=Recipe(heatmap_radius=(23, 10), paf_width=(6, 3))).to_dict()}
    assert student_eval._sizes(extra).at(None) == (17, 4)
    assert student_eval._sizes(extra, "final").at(None) == (10, 3)
    assert student_eval._sizes({"target_sizes": {"heatmap_radius": 10 ** 6, "paf_width": 4}}).at(None) == (8, 2)
    assert student_eval._sizes({}).at(None) == (8, 2)


def test_limit_and_an_imperfect_model(store: str) -> None:
    class Zero(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            b = images.shape[0]
            return {"maps": torch.zeros(b, 44, SIZE, SIZE), "tokens": torch.full((b, 8, 300), 0.1)}

    result = student_eval.evaluate(Zero(), store, SPLIT, limit=4, batch_size=3, progress=False)
    assert result["samples"] == 4
    joints = result["modalities"]["joints"]
    # every target value lies within 1 of 0, so at T = 0.5 on the [0, 1] scale every pixel counts as a hit
    assert joints["hdm@0.5"] == 1.0 and joints["hdm@0.1"] < 0.5
    assert 0.5 < joints["mse"] <= 1.0  # the background of heatmaps is -1: squared error 1 there
    hdms = [joints[f"hdm@{t}"] for t in HDM_THRESHOLDS]
    assert hdms == sorted(hdms)


def test_cli_writes_table_and_json(store: str, tmp_path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(image_size=SIZE)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, YMapNet(cfg), cfg)
    parser = argparse.ArgumentParser()
    student_eval.add_arguments(parser)
    out = tmp_path / "eval.json"
    args = parser.parse_args(["--checkpoint", str(ckpt), "--shards", store, "--split", SPLIT, "--limit", "5",
                              "--json", str(out), "--no-progress"])
    assert student_eval.run(args) == 0
    printed = capsys.readouterr().out
    assert "HDM@0.1" in printed and "normals" in printed and "#8" in printed and "joint PCK@0.1" in printed
    doc = json.loads(out.read_text())
    assert doc["samples"] == 5 and doc["split"] == SPLIT and len(doc["tokens"]["cos"]) == 8
    for row in doc["modalities"].values():
        assert 0.0 <= row["hdm@0.1"] <= row["hdm@0.8"] <= 1.0 and row["mse"] >= 0.0


def test_cli_usage_errors(store: str, tmp_path) -> None:
    cfg = ModelConfig.tiny(image_size=SIZE * 2)
    ckpt = tmp_path / "big.pt"
    save_checkpoint(ckpt, YMapNet(cfg), cfg)
    parser = argparse.ArgumentParser()
    student_eval.add_arguments(parser)
    assert student_eval.run(parser.parse_args(["--checkpoint", str(ckpt), "--shards", store,
                                               "--split", "train2017"])) == 2  # no such split
    assert student_eval.run(parser.parse_args(["--checkpoint", str(ckpt), "--shards", store])) == 2  # sizes differ
    assert student_eval.run(parser.parse_args(["--checkpoint", str(tmp_path / "none.pt"), "--shards", store,
                                               "--split", SPLIT])) == 2


def test_limit_scores_the_same_samples_with_any_worker_count(store: str) -> None:
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            seen.append(images.sum(dim=(1, 2, 3)).tolist())
            b = images.shape[0]
            return {"maps": torch.zeros(b, 44, SIZE, SIZE), "tokens": torch.zeros(b, 8, 300)}

    results = []
    for workers in (0, 2):
        seen.clear()
        result = student_eval.evaluate(Recorder(), store, SPLIT, limit=4, batch_size=3, workers=workers,
                                       progress=False)
        results.append((result, [v for batch in seen for v in batch][:4]))
    assert results[0] == results[1]


def test_checkpoint_and_store_faults_are_one_line(store: str, tmp_path, capsys: pytest.CaptureFixture) -> None:
    from student import cli

    bad_cfg = tmp_path / "badcfg.pt"
    torch.save({"model": {}, "model_cfg": {"image_size": 100}}, bad_cfg)
    assert cli.main(["eval", "--checkpoint", str(bad_cfg), "--shards", store, "--split", SPLIT]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "badcfg.pt: its model_cfg is not a valid model config" in err
    cfg = ModelConfig.tiny(image_size=SIZE)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, YMapNet(cfg), cfg)
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    tar = sorted((damaged / SPLIT / "depth").glob("*/*-000000.tar"))[0]
    data = bytearray(tar.read_bytes())
    start = data.index(b"IDAT") + 8  # inside the first depth PNG's compressed pixels
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    tar.write_bytes(bytes(data))
    for workers in ("0", "2"):  # a fault inside a loader worker comes back as one line too
        assert cli.main(["eval", "--checkpoint", str(ckpt), "--shards", str(damaged), "--split", SPLIT,
                         "--workers", workers, "--no-progress", "--device", "auto"]) == 1  # damaged: 1, as shards
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "member depth.png" in err and "shards verify" in err, err


def test_weights_that_do_not_fit_their_config_name_the_first_mismatch(store: str, tmp_path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from dataclasses import replace

    from student import cli

    cfg = ModelConfig.tiny(image_size=SIZE)
    ckpt = tmp_path / "mismatched.pt"
    save_checkpoint(ckpt, YMapNet(replace(cfg, bridge_filters=8)), cfg)  # weights of another network
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--shards", store, "--split", SPLIT, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == (f"student eval: error: {ckpt}: weights do not match the saved config (bridge.0.weight: the "
                   "config asks for [16, 16, 3, 3], the weights hold [8, 16, 3, 3])")


@pytest.mark.parametrize("pose, problem", [
    ({"persons": [{"keypoints": [[1.0, 2.0, 2]], "bbox": [0, 0, 1, 1]}], "crowd": []},
     "persons[0] needs keypoints of 17 [x, y, v] triples, got a list of 1 item(s)"),
    ({}, "lacks 'persons' and 'crowd' (the pose stage writes both)"),
    ([], "holds a JSON list, expected an object with persons and crowd"),
    ({"persons": [], "crowd": [{"bbox": [1, 2]}]}, "crowd[0] needs a bbox of 4 numbers when it has no segmentation"),
])
def test_pose_json_of_the_wrong_structure_is_one_line(store: str, tmp_path, capsys: pytest.CaptureFixture,
                                                      pose: object, problem: str) -> None:
    import shutil

    from student import cli

    cfg = ModelConfig.tiny(image_size=SIZE)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, YMapNet(cfg), cfg)
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    keys = set_pose(damaged / SPLIT, pose)
    for workers in ("0", "2"):  # in a loader worker too
        assert cli.main(["eval", "--checkpoint", str(ckpt), "--shards", str(damaged), "--split", SPLIT,
                         "--workers", workers, "--no-progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"student eval: error: shard {SPLIT}-000000 key {keys[0]} member pose.json: {problem}")
        assert err.endswith("(run `shards verify`)")
