"""The student's loader, metrics and training loop: host dtypes, exact resume, CLI errors, TensorBoard output."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.synthetic import write_synthetic_store
from shards_stores import set_pose
from student import cli
from student.config import ModelConfig, TrainConfig
from student.data import SLOTS_PER_WORKER, make_loader, open_split, skip_remainder, to_device
from student.metrics import MetricSums, hdm, token_cosine
from student.recipe import Recipe
from student.train import lr_at, train

SIZE = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("student_store")
    write_synthetic_store(root, "train2017", 24, 8, size=SIZE, seed=0)
    write_synthetic_store(root, "val2017", 8, 4, size=SIZE, seed=1)
    return root


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(store: Path, out: Path, recipe: dict | None = None, **kw) -> TrainConfig:
    r = Recipe.from_dict({"epochs": 2, "batch_size": 4, "lr": 1e-3, **(recipe or {})})
    base = TrainConfig(shards=str(store), out=str(out), model="tiny", recipe=r, steps_per_epoch=3, workers=0,
                       tensorboard=False, progress=False, shuffle_buffer=8)
    return replace(base, **kw)


def test_loader_keeps_compact_host_dtypes_through_workers_and_skips_exactly(store: Path) -> None:
    dataset = open_split(store, "train2017", train=True, batch_size=4, seed=0, multihot_vocab=16,
                         one_pass=False)  # 12 batches: more than one pass holds
    dataset.set_epoch(2)
    batches = iter(make_loader(dataset, workers=2))
    first = [next(batches) for _ in range(5)]
    dataset.set_epoch(2, skip_batches=3)  # resuming after 3 batches: workers skip one round, we drop one
    resumed = iter(make_loader(dataset, workers=2))
    assert skip_remainder(3, 2) == 1
    next(resumed)
    for expected in first[3:]:
        again = next(resumed)
        assert again["key"] == expected["key"] and torch.equal(again["image"], expected["image"])
    batch = first[0]
    expected = {"image": torch.uint8, "pose": torch.int8, "pose_mask": torch.uint8, "depth": torch.uint16,
                "normals": torch.uint8, "text": torch.uint8, "groups": torch.uint8, "glove": torch.float16,
                "multihot": torch.uint8}
    assert {k: v.dtype for k, v in batch.items() if isinstance(v, torch.Tensor)} == expected
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["pose"].shape == (4, 29, SIZE, SIZE)
    assert batch["normals"].shape == (4, SIZE, SIZE, 3)
    moved = to_device(batch, torch.device("cpu"))
    assert moved["images"].shape == (4, 3, SIZE, SIZE) and moved["images"].is_contiguous()
    assert torch.equal(moved["images"][1, 2], batch["image"][1, :, :, 2])
    assert len(batch["key"]) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_released_batch_buffers_are_reused_and_held_ones_never_overwritten(store: Path, workers: int) -> None:
    dataset = open_split(store, "train2017", train=True, batch_size=4, seed=0, multihot_vocab=16,
                         one_pass=False)  # 12 batches: more than one pass holds

    def stream(release: bool) -> list[dict]:
        dataset.set_epoch(1)
        batches, kept, held = iter(make_loader(dataset, workers=workers)), [], None
        for i in range(12):
            batch = next(batches)
            kept.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            if i == 1:
                held = batch  # never released: its memory must keep its values to the end
            elif release:
                dataset.release(batch)
        assert all(torch.equal(held[k], kept[1][k]) for k in held if isinstance(held[k], torch.Tensor))
        return kept

    reused, fresh = stream(True), stream(False)
    assert [b["key"] for b in reused] == [b["key"] for b in fresh]
    for a, b in zip(reused, fresh):  # a refilled buffer holds exactly what new memory would
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    slots = [b["slot"] for b in reused if b["slot"] >= 0]
    assert len(slots) >= 8 and len(set(slots)) < len(slots)  # released slots came back and were refilled
    # without releases each process fills its SLOTS_PER_WORKER buffers once, then new memory (slot -1)
    assert [b["slot"] for b in fresh].count(-1) == len(fresh) - SLOTS_PER_WORKER * max(1, workers)


def test_validation_stream_is_one_ordered_pass_with_final_sizes(store: Path) -> None:
    dataset = open_split(store, "val2017", train=False, batch_size=3)
    batches = list(dataset)
    assert [len(b["key"]) for b in batches] == [3, 3, 2] and batches[-1]["pose"].shape[0] == 2
    keys = [k for b in batches for k in b["key"]]
    assert keys == sorted(keys) and len(set(keys)) == 8
    assert dataset.transform.augment is None and dataset.transform.epoch is None


def test_metrics_values() -> None:
    pred = torch.full((1, 44, 2, 2), -1.0)
    target = torch.full((1, 44, 2, 2), -1.0)
    target[0, :, 0, 0] = 1.0  # off by 1.0 on the [0, 1] scale at one pixel of four
    pred[0, :, 0, 1] = -0.5  # off by 0.25 at another
    assert hdm(pred, target, 0.1).item() == pytest.approx(0.5)
    assert hdm(pred, target, 0.3).item() == pytest.approx(0.75)
    tokens = torch.zeros(2, 8, 300)
    glove = torch.zeros(2, 8, 300)
    tokens[:, 0], glove[:, 0] = 1.0, 0.5  # same direction
    tokens[0, 1, :150], glove[0, 1, 150:] = 1.0, 0.5  # orthogonal; slot 1 of sample 1 is empty
    tokens[1, 1, :] = 1.0  # a word where the target slot is empty: 0 in the paper's metric
    glove[1, 2, 0] = 0.5  # near zero (mean square <= 0.003): an empty slot
    tokens[1, 2, 0] = 1.0  # ... that the paper's metric still scores (cosine 1)
    sums, counts = token_cosine(tokens, glove)
    assert counts[0, :3].tolist() == [2, 2, 2] and sums[0, :3].tolist() == pytest.approx([2.0, 0.0, 1.0])
    assert counts[1, :3].tolist() == [2, 1, 0] and sums[1, :3].tolist() == pytest.approx([2.0, 0.0, 0.0])
    sums = MetricSums()
    sums.update(pred, target, tokens, glove, torch.tensor(3.0))
    m = sums.compute()
    assert m["joints/hdm@0.1"] == pytest.approx(0.5) and m["depth/hdm@0.8"] == pytest.approx(0.75)
    assert m["joints/mse"] == pytest.approx((4.0 + 0.25) / 4)
    assert m["tokens/cos0"] == pytest.approx(1.0) and m["tokens/cos1"] == pytest.approx(0.0)
    assert m["tokens/cos2"] == pytest.approx(0.5) and m["tokens/cos3"] == pytest.approx(0.0)  # paper: all samples
    assert m["tokens/cos0_nonempty"] == pytest.approx(1.0) and math.isnan(m["tokens/cos2_nonempty"])
    assert m["tokens/cos"] == pytest.approx(3.0 / 16) and m["tokens/cos_nonempty"] == pytest.approx(2.0 / 3)
    # foreground IoU: the prediction has no foreground, so every channel with a target foreground scores 0
    assert m["joints/iou"] == 0.0 and m["groups/iou"] == 0.0 and m["text/iou"] == 0.0
    assert m["loss"] == 3.0
    masked = MetricSums()  # pixel (0, 0) in a crowd region: joints and PAFs leave it out, depth does not
    masked.update(pred, target, tokens, glove, pose_mask=torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]))
    m = masked.compute()
    assert m["joints/hdm@0.1"] == pytest.approx(2 / 3) and m["pafs/mse"] == pytest.approx(0.25 / 3)
    assert m["depth/hdm@0.1"] == pytest.approx(0.5) and m["depth/mse"] == pytest.approx((4.0 + 0.25) / 4)


def test_foreground_iou_is_not_fooled_by_an_all_background_output() -> None:
    target = torch.full((2, 44, 8, 8), -1.0)
    target[:, 0, 2:4, 2:4] = 1.0  # a joint blob
    target[:, 34, :4] = 1.0  # a group region
    background = MetricSums()
    background.update(torch.full_like(target, -1.0), target, torch.zeros(2, 8, 300), torch.zeros(2, 8, 300))
    m = background.compute()
    assert m["joints/hdm@0.1"] > 0.99 and m["joints/iou"] == 0.0 and m["groups/iou"] == 0.0
    perfect = MetricSums()
    perfect.update(target.clone(), target, torch.zeros(2, 8, 300), torch.zeros(2, 8, 300))
    assert perfect.compute()["joints/iou"] == 1.0 and perfect.compute()["groups/iou"] == 1.0


def test_learning_rate_decays_linearly() -> None:
    recipe = TrainConfig().recipe
    assert lr_at(recipe, 0) == pytest.approx(2.4e-4)
    assert lr_at(recipe, 50) == pytest.approx(1.7e-4)
    assert lr_at(recipe, 100) == pytest.approx(1.0e-4) and lr_at(recipe, 240) == pytest.approx(1.0e-4)


def test_stopped_and_resumed_run_follows_the_uninterrupted_loss_curve(store: Path, tmp_path: Path,
                                                                      one_thread) -> None:
    full = train(_cfg(store, tmp_path / "full"))
    assert len(full["losses"]) == 6 and full["epochs"] == 2 and not full["interrupted"]
    first = train(_cfg(store, tmp_path / "split"), stop_at_step=4)  # stops inside the second epoch
    assert first["interrupted"] and len(first["losses"]) == 4
    rest = train(_cfg(store, tmp_path / "split"), resume=str(tmp_path / "split" / "last.pt"))
    assert len(rest["losses"]) == 2 and rest["epochs"] == 2
    assert np.allclose(first["losses"] + rest["losses"], full["losses"], rtol=1e-5, atol=1e-6)
    assert full["losses"][0] != full["losses"][3]  # the curve really moves
    assert rest["best"] == pytest.approx(full["best"], rel=1e-5)
    payload = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert payload["epoch"] == 2 and payload["step"] == 6 and payload["position"] == {"epoch": 2, "batch": 0}
    assert payload["train_cfg"]["model"] == "tiny" and "joints/hdm@0.1" in payload["metrics"]
    assert set(payload["optimizer"]) == {"state", "param_groups"}


def test_holding_the_next_batch_ahead_keeps_the_curve_and_the_resume_position(store: Path, tmp_path: Path,
                                                                               monkeypatch, one_thread) -> None:
    """The CUDA prefetch's bookkeeping on the CPU: a feed that sends each next batch one step early (as the side
    stream does) gives the plain curve, and a run stopped while holding a batch resumes at the right one."""
    import student.train as train_module
    from student.data import DeviceFeed, to_device

    calls = {"send": 0, "receive": 0}

    class AheadFeed(DeviceFeed):
        def __init__(self, device: torch.device, channels_last: bool = False, overlap: bool = True) -> None:
            super().__init__(device, channels_last, overlap)
            self.stream = object() if overlap else None  # the train loop holds a batch ahead when there is one

        def send(self, host):
            calls["send"] += 1
            return to_device(host, self.device, self.channels_last)

        def receive(self, batch):
            calls["receive"] += 1
            return batch

    plain = train(_cfg(store, tmp_path / "plain", prefetch=False))
    monkeypatch.setattr(train_module, "DeviceFeed", AheadFeed)
    full = train(_cfg(store, tmp_path / "full"))
    assert calls == {"send": 6, "receive": 6}  # two epochs of 3 steps: nothing sent twice or lost
    np.testing.assert_array_equal(full["losses"], plain["losses"])
    calls.update(send=0, receive=0)
    first = train(_cfg(store, tmp_path / "split"), stop_at_step=4)  # stops holding step 5's batch
    assert calls == {"send": 5, "receive": 4}
    rest = train(_cfg(store, tmp_path / "split"), resume=str(tmp_path / "split" / "last.pt"))
    np.testing.assert_allclose(first["losses"] + rest["losses"], plain["losses"], rtol=1e-5, atol=1e-6)


def test_cli_trains_writes_tensorboard_and_resumes(store: Path, tmp_path: Path, capsys, one_thread) -> None:
    out = tmp_path / "run"
    argv = ["train", "--shards", str(store), "--model", "tiny", "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "2", "--workers", "0", "--out", str(out), "--no-progress", "--val-steps", "1"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["state"] == "done" and result["epochs"] == 1
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["train"]["steps_per_epoch"] == 2 and saved["parameters"]["total"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb")).Reload()
    assert len(events.Scalars("train/loss")) == 2 and len(events.Scalars("val/loss")) == 1
    assert events.Tags()["images"] == ["val/panel"]
    # resuming with a larger epoch budget continues from epoch 1 with the saved settings
    assert cli.main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--no-tensorboard"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 2
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4


def test_cli_errors_are_one_line(store: Path, tmp_path: Path, capsys) -> None:
    base = ["train", "--model", "tiny", "--workers", "0", "--out", str(tmp_path / "run")]
    assert cli.main(base + ["--shards", str(store), "--train-split", "train2099"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train2099" in err
    broken = tmp_path / "broken"
    write_synthetic_store(broken, "train2017", 4, 4, size=SIZE)
    manifest = broken / "train2017" / "manifest.json"
    doc = json.loads(manifest.read_text())
    del doc["columns"]["depth"], doc["columns"]["groups"]
    manifest.write_text(json.dumps(doc))
    assert cli.main(base + ["--shards", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lacks column(s) depth, groups" in err
    assert cli.main(base + ["--shards", str(store), "--resume", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert cli.main(["bogus"]) == 2


def test_early_stopping_after_patience_epochs_without_improvement(store: Path, tmp_path: Path, monkeypatch,
                                                                   one_thread) -> None:
    import student.train as train_module

    val_losses = iter([1.0, 2.0, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5])
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: ({"loss": next(val_losses),
                                                                    "joints/hdm@0.1": 0.0, "tokens/cos": 0.0}, None))
    result = train(_cfg(store, tmp_path / "run", {"epochs": 10, "patience": 2, "early_stop_start_epoch": 0},
                        steps_per_epoch=1))
    assert result["epochs"] == 5 and result["best"] == 0.5  # best at epoch 3, then 2 epochs without improvement
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == 3 and best["metrics"]["loss"] == 0.5
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["stale"] == 2


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_sigterm_and_sigusr1_inside_a_step_save_as_ctrl_c_does(store: Path, tmp_path: Path, monkeypatch, one_thread,
                                                               name: str) -> None:
    import os
    import signal

    import student.train as train_module

    real_loss, calls = train_module.compute_loss, []

    def loss_then_signal(*args, **kwargs):  # the signal arrives after the forward pass of the second step
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), getattr(signal, name))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", loss_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    result = train(_cfg(store, tmp_path / "run"))
    assert result["interrupted"] and result["signal"] == getattr(signal, name) and len(result["losses"]) == 2
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["step"] == 2 and saved["position"] == {"epoch": 0, "batch": 2}
    assert signal.getsignal(signal.SIGTERM) == before  # the run's handlers are gone with it


def test_sigterm_to_the_process_group_stops_a_run_with_workers_cleanly(store: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "student.cli", "train", "--shards", str(store), "--model", "tiny",
            "--epochs", "50", "--steps-per-epoch", "1000", "--batch-size", "2", "--workers", "2", "--out", str(out),
            "--no-progress", "--device", "cpu", "--no-tensorboard"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal or `timeout` makes
    try:
        deadline = time.monotonic() + 120
        while not (out / "train_config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the run writes into --out once its first step is done
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGTERM)  # main process and loader workers alike
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "exited unexpectedly" not in err, err
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["step"] >= 1 and saved["position"]["batch"] == saved["step"]


def test_ctrl_c_inside_a_step_finishes_the_step_before_saving(store: Path, tmp_path: Path, monkeypatch,
                                                              one_thread) -> None:
    import os
    import signal

    import student.train as train_module

    full = train(_cfg(store, tmp_path / "full"))
    real_loss, calls = train_module.compute_loss, []

    def loss_then_ctrl_c(*args, **kwargs):  # SIGINT after the forward pass of the second step
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", loss_then_ctrl_c)
    first = train(_cfg(store, tmp_path / "split"))
    monkeypatch.setattr(train_module, "compute_loss", real_loss)
    assert first["interrupted"] and len(first["losses"]) == 2  # the step the signal hit was finished and counted
    saved = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert saved["step"] == 2 and saved["position"] == {"epoch": 0, "batch": 2}
    rest = train(_cfg(store, tmp_path / "split"), resume=str(tmp_path / "split" / "last.pt"))
    assert np.allclose(first["losses"] + rest["losses"], full["losses"], rtol=1e-5, atol=1e-6)
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys()
    for name in a:  # BatchNorm statistics and step counters included
        assert torch.allclose(a[name].float(), b[name].float(), rtol=1e-5, atol=1e-6), name


def test_ctrl_c_during_validation_keeps_the_epoch(store: Path, tmp_path: Path, monkeypatch, one_thread) -> None:
    import student.train as train_module

    full = train(_cfg(store, tmp_path / "full"))
    real_evaluate = train_module.evaluate

    def interrupted_evaluate(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupted_evaluate)
    first = train(_cfg(store, tmp_path / "split"))
    assert first["interrupted"] and len(first["losses"]) == 3
    saved = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert saved["epoch"] == 0 and saved["position"] == {"epoch": 0, "batch": 3}
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    rest = train(_cfg(store, tmp_path / "split"), resume=str(tmp_path / "split" / "last.pt"))
    assert len(rest["losses"]) == 3 and rest["epochs"] == 2  # validation of epoch 1, then epoch 2
    assert np.allclose(first["losses"] + rest["losses"], full["losses"], rtol=1e-5, atol=1e-6)
    assert rest["best"] == pytest.approx(full["best"], rel=1e-5)


def test_a_diverged_loss_stops_the_run(store: Path, tmp_path: Path, monkeypatch, capsys, one_thread) -> None:
    import student.train as train_module

    real_loss = train_module.compute_loss

    def nan_loss(*args, **kwargs):
        loss, parts = real_loss(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(train_module, "compute_loss", nan_loss)
    argv = ["train", "--shards", str(store), "--model", "tiny", "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "2", "--workers", "0", "--out", str(tmp_path / "run"), "--no-progress",
            "--no-tensorboard"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the training loss is nan at step 1" in err


def test_resume_goes_on_in_the_checkpoints_folder(store: Path, tmp_path: Path, capsys, one_thread) -> None:
    import shutil

    out = tmp_path / "run"
    argv = ["train", "--shards", str(store), "--model", "tiny", "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "2", "--workers", "0", "--out", str(out), "--no-progress", "--no-tensorboard",
            "--val-steps", "1"]
    assert cli.main(argv) == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    original = (out / "last.pt").read_bytes()
    assert cli.main(["train", "--resume", str(copy / "last.pt"), "--epochs", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["checkpoint"] == str(copy.resolve() / "last.pt")
    assert (out / "last.pt").read_bytes() == original  # the run it was copied from is untouched
    assert torch.load(copy / "last.pt", weights_only=True)["epoch"] == 2
    assert cli.main(["train", "--resume", str(copy / "last.pt"), "--model", "paper"]) == 2
    assert "is a tiny model" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed must be >= 0"), (["--lr", "inf"], "--lr must be a finite number"),
    (["--device", "meta"], "'meta' devices are not supported"), (["--device", "mps"], "no Apple MPS device"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
])
def test_bad_training_flags_are_one_line(store: Path, tmp_path: Path, capsys, flags, message) -> None:
    if flags[-1] == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    argv = ["train", "--shards", str(store), "--model", "tiny", "--workers", "0", "--out", str(tmp_path / "r")]
    assert cli.main(argv + flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert err.startswith("student train: error: ")  # as every other error line of the student commands


def test_malformed_training_state_is_one_line(store: Path, tmp_path: Path, capsys, tiny_checkpoint: str) -> None:
    payload = torch.load(tiny_checkpoint, weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({**payload, "optimizer": {}, "train_cfg": {}, "epoch": 0, "step": 0, "position": None, "best": 1.0,
                "stale": 0, "metrics": {}}, bad)
    assert cli.main(["train", "--resume", str(bad), "--shards", str(store), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training state" in err and "bad.pt" in err


def test_a_split_the_store_lacks_names_the_splits_it_has(store: Path, tmp_path: Path, capsys) -> None:
    argv = ["train", "--shards", str(store), "--model", "tiny", "--workers", "0", "--out", str(tmp_path / "r"),
            "--val-split", "test2017"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "has no split 'test2017' (it has train2017, val2017)" in err and "--val-split" in err


def test_a_second_ctrl_c_inside_a_step_stops_without_saving_it(store: Path, tmp_path: Path, monkeypatch,
                                                               one_thread) -> None:
    import os
    import signal

    import student.train as train_module

    real_loss = train_module.compute_loss

    def loss_then_two_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # held: the step would finish
        os.kill(os.getpid(), signal.SIGINT)  # the second one stops at once
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", loss_then_two_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(store, tmp_path / "run"))
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing half-done was saved
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored


# ---- a new-user review: runs never overwrite each other, checks before an epoch is spent --------------------


def _tiny_run(store: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--shards", str(store), "--model", "tiny", "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "2", "--workers", "0", "--out", str(out), "--no-progress", "--val-steps", "1", *extra]


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file below ``out`` (TensorBoard event files included) by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_new_run_refuses_a_folder_holding_a_run(store: Path, tmp_path: Path, capsys, one_thread) -> None:
    out = tmp_path / "run"
    assert cli.main(_tiny_run(store, out)) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert {"last.pt", "best.pt", "train_config.json"} <= set(before) and any(k.startswith("tb/") for k in before)
    assert cli.main(_tiny_run(store, out, "--epochs", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"student train: error: --out {out} already holds a run")
    assert f"--resume {out / 'last.pt'}" in err and "--overwrite" in err
    assert _snapshot(out) == before  # nothing written, TensorBoard included
    # a resumed run goes on in its own folder, but does not take over another run's folder either
    other = tmp_path / "other"
    assert cli.main(_tiny_run(store, other)) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(other / "last.pt"), "--out", str(out), "--epochs", "2"]) == 2
    assert "already holds a run" in capsys.readouterr().err and _snapshot(out) == before
    # stopped (as by Ctrl-C) before its first step, an --overwrite run has replaced nothing yet, nor saved
    stopped = train(_cfg(store, out, tensorboard=True), stop_at_step=0, overwrite=True)
    assert stopped["interrupted"] and stopped["checkpoint"] is None and _snapshot(out) == before
    # --overwrite replaces the run: fresh checkpoints, one TensorBoard log, no file of the old run left
    assert cli.main(_tiny_run(store, out, "--seed", "3", "--overwrite")) == 0
    after = _snapshot(out)
    assert json.loads(after["train_config.json"])["train"]["seed"] == 3
    assert torch.load(out / "last.pt", weights_only=True)["train_cfg"]["seed"] == 3
    assert len([k for k in after if k.startswith("tb/")]) == 1 and not set(after) & (set(before) - {
        "last.pt", "best.pt", "train_config.json"})


def test_overwrite_is_in_the_help(capsys) -> None:
    assert cli.main(["train", "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out


def test_a_resume_that_fails_early_leaves_the_run_as_it_was(store: Path, tmp_path: Path, monkeypatch, capsys,
                                                             one_thread) -> None:
    import student.train as train_module

    out = tmp_path / "run"
    assert cli.main(_tiny_run(store, out)) == 0
    before = _snapshot(out)
    real_loss = train_module.compute_loss

    def nan_loss(*args, **kwargs):  # fails in the first step of the resumed run
        loss, parts = real_loss(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(train_module, "compute_loss", nan_loss)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out / "last.pt"), "--epochs", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("student train: error: the training loss is nan")
    assert _snapshot(out) == before  # train_config.json not rewritten, no new TensorBoard event file


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train2017 at 32 pixels, val2017 at 64."""
    root = tmp_path_factory.mktemp("mixed_store")
    write_synthetic_store(root, "train2017", 8, 8, size=SIZE, seed=0)
    write_synthetic_store(root, "val2017", 4, 4, size=2 * SIZE, seed=1)
    return root


def test_a_val_split_of_another_size_is_refused_before_training(mixed_store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert cli.main(_tiny_run(mixed_store, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == (f"student train: error: store {mixed_store}/val2017 has 64-pixel samples but the model (made for "
                   f"split train2017) expects {SIZE}")
    assert not out.exists()  # refused before anything was written


def test_resuming_against_a_val_split_of_another_size_names_the_checkpoint(store: Path, mixed_store: Path,
                                                                           tmp_path: Path, capsys,
                                                                           one_thread) -> None:
    out = tmp_path / "run"
    assert cli.main(_tiny_run(store, out)) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out / "last.pt"), "--shards", str(mixed_store), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"student train: error: store {mixed_store}/val2017 has 64-pixel samples but the checkpoint "
                   f"{out / 'last.pt'} expects {SIZE}")
    assert _snapshot(out) == before


def _training_checkpoint(path: Path, model_cfg, weights: dict, optimizer: dict, store: Path) -> Path:
    from student.checkpoint import save_checkpoint
    from student.model import YMapNet

    model = YMapNet(model_cfg)
    model.load_state_dict(weights)
    train_cfg = _cfg(store, path.parent).to_dict()
    save_checkpoint(path, model, model_cfg, optimizer=optimizer, train_cfg=train_cfg, epoch=0, step=0,
                    position={"epoch": 0, "batch": 0}, best=math.inf, stale=0, metrics={})
    return path


def test_checkpoint_weights_or_optimiser_that_do_not_fit_are_one_line(store: Path, tmp_path: Path,
                                                                      capsys) -> None:
    from student.config import ModelConfig
    from student.model import YMapNet

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(SIZE)
    other = replace(cfg, bridge_filters=8)  # same keys, other shapes
    model = YMapNet(cfg)
    good = torch.optim.Adam(model.parameters()).state_dict()
    run = tmp_path / "run"
    run.mkdir()
    mismatched = _training_checkpoint(run / "mismatched.pt", cfg, model.state_dict(), good, store)
    payload = torch.load(mismatched, weights_only=True)
    payload["model"] = YMapNet(other).state_dict()  # weights of another network under this config
    torch.save(payload, mismatched)
    assert cli.main(["train", "--resume", str(mismatched), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"student train: error: {mismatched}: weights do not match the saved config (bridge.")
    foreign = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]).state_dict()
    alien = _training_checkpoint(run / "alien.pt", cfg, model.state_dict(), foreign, store)
    assert cli.main(["train", "--resume", str(alien), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"student train: error: {alien}: its optimiser state does not fit the model (")
    assert sorted(p.name for p in run.iterdir()) == ["alien.pt", "mismatched.pt"]  # nothing else written


def test_store_path_is_saved_absolute_and_a_lost_store_is_named(store: Path, tmp_path: Path, monkeypatch, capsys,
                                                               one_thread) -> None:
    monkeypatch.chdir(store.parent)
    out = tmp_path / "run"
    assert cli.main(_tiny_run(Path(store.name), out)) == 0  # a relative --shards
    assert torch.load(out / "last.pt", weights_only=True)["train_cfg"]["shards"] == str(store)
    assert json.loads((out / "train_config.json").read_text())["train"]["shards"] == str(store)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--no-tensorboard"]) == 0
    # a checkpoint that saved a relative path (as older versions did), resumed from another folder
    payload = torch.load(out / "last.pt", weights_only=True)
    payload["train_cfg"]["shards"] = store.name
    old = out / "old.pt"
    torch.save(payload, old)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(old), "--epochs", "3", "--no-tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("student train: error: ")
    assert f"the store path {store.name} comes from {old}; pass --shards" in err
    assert cli.main(["train", "--resume", str(old), "--epochs", "3", "--no-tensorboard", "--shards", str(store)]) == 0


def test_pose_json_of_the_wrong_structure_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    import re

    root = tmp_path / "store"
    write_synthetic_store(root, "train2017", 4, 4, size=SIZE, seed=0)
    write_synthetic_store(root, "val2017", 4, 4, size=SIZE, seed=1)
    keys = set_pose(root / "train2017", {"persons": [{"keypoints": [[1.0, 2.0, 2]], "bbox": [0, 0, 1, 1]}],
                                          "crowd": []})
    for workers in ("0", "2"):
        argv = ["train", "--shards", str(root), "--model", "tiny", "--epochs", "1", "--steps-per-epoch", "2",
                "--batch-size", "2", "--workers", workers, "--out", str(tmp_path / "run"), "--no-progress"]
        assert cli.main(argv) == 1  # a damaged store
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        found = re.fullmatch(r"student train: error: shard train2017-000000 key (\d+) member pose.json: persons\[0\] "
                             r"needs keypoints of 17 \[x, y, v\] triples, got a list of 1 item\(s\) "
                             r"\(run `shards verify`\)", err)
        assert found and found.group(1) in keys, err
    assert not (tmp_path / "run").exists()  # failed in the first step: nothing written


def test_an_out_that_cannot_be_written_is_refused_before_training(store: Path, tmp_path: Path, capsys,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))  # as non-root
    assert cli.main(_tiny_run(store, locked / "run")) == 2
    assert capsys.readouterr().err.strip() == (f"student train: error: --out {locked / 'run'}: {locked} is not "
                                               "writable")
    assert not (locked / "run").exists()


def test_an_out_that_is_a_file_is_refused_before_training(store: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    for out, text in ((tmp_path / "afile", f"--out {tmp_path / 'afile'} is a file, not a folder"),
                      (tmp_path / "afile" / "run", f"--out {tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} is a "
                                                   "file, not a folder")):
        assert cli.main(_tiny_run(store, out)) == 2
        assert capsys.readouterr().err.strip() == f"student train: error: {text}"


def test_validation_uses_the_target_sizes_of_the_epoch_and_checkpoints_record_them(store: Path, tmp_path: Path,
                                                                                  monkeypatch, one_thread) -> None:
    import student.train as train_module

    seen = []
    real = train_module.evaluate

    def spy(model, dataset, *a, **k):
        seen.append(dataset.transform.sizes.at(dataset.transform.epoch))
        return real(model, dataset, *a, **k)

    monkeypatch.setattr(train_module, "evaluate", spy)
    recipe = {"epochs": 3, "heatmap_radius": [20, 8], "paf_width": [6, 2], "size_step_epochs": 1}
    train(_cfg(store, tmp_path / "run", recipe, steps_per_epoch=1))
    assert seen == [(20, 6), (19, 5), (18, 4)]  # what each epoch trained toward, not the limits (8, 2)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["target_sizes"] == {"heatmap_radius": 18, "paf_width": 4}


def test_max_steps_and_max_minutes_end_a_run_normally(store: Path, tmp_path: Path, capsys, one_thread) -> None:
    result = train(_cfg(store, tmp_path / "steps", {"epochs": 5}, max_steps=4))
    assert not result["interrupted"] and result["stopped"] == "max_steps" and len(result["losses"]) == 4
    assert torch.load(tmp_path / "steps" / "last.pt", weights_only=True)["step"] == 4
    base = ["train", "--shards", str(store), "--model", "tiny", "--workers", "0", "--batch-size", "2",
            "--steps-per-epoch", "2", "--no-progress", "--no-tensorboard", "--val-steps", "1"]
    assert cli.main(base + ["--out", str(tmp_path / "minutes"), "--epochs", "50", "--max-minutes", "0.0001"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out.strip().splitlines()[-1])
    assert doc["state"] == "done" and doc["stopped"] == "max_minutes" and doc["steps"] == 1
    # with --no-progress each epoch still ends in a plain line, and the JSON has the epoch losses
    assert cli.main(base + ["--out", str(tmp_path / "two"), "--epochs", "2"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "train loss" in lines[0] and "IoU joints" in lines[0] and "groups" in lines[0]
    doc = json.loads(captured.out.strip().splitlines()[-1])
    assert len(doc["epoch_train_losses"]) == 2 and doc["train_loss"] == doc["epoch_train_losses"][-1]
    assert doc["stopped"] is None and doc["epochs"] == 2


def test_multihot_head_is_optional_detached_and_out_of_the_validation_loss(store: Path, tmp_path: Path,
                                                                          one_thread) -> None:
    plain = train(_cfg(store, tmp_path / "plain", {"epochs": 1}))
    assert "multihot/bce" not in plain["val"]
    assert torch.load(tmp_path / "plain" / "last.pt", weights_only=True)["model_cfg"]["multihot_vocab"] == 0
    head = train(_cfg(store, tmp_path / "head", {"epochs": 1, "multihot": True, "gain_multihot": 3.0}))
    saved = torch.load(tmp_path / "head" / "last.pt", weights_only=True)
    assert saved["model_cfg"]["multihot_vocab"] == 2048 and saved["train_cfg"]["recipe"]["gain_multihot"] == 3.0
    assert head["val"]["multihot/bce"] > 0
    # the head neither changes the seven-term validation loss nor the maps and tokens it is trained beside
    assert head["val"]["loss"] == pytest.approx(plain["val"]["loss"], rel=1e-5)


def test_a_resumed_run_keeps_its_head(store: Path, tmp_path: Path, capsys, one_thread) -> None:
    train(_cfg(store, tmp_path / "run", {"epochs": 1}))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(tmp_path / "run" / "last.pt"), "--epochs", "2", "--multihot",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no multi-hot head but the recipe asks for one" in err


def test_a_limit_at_an_epochs_end_still_validates_and_resume_forgets_limits(store: Path, tmp_path: Path, capsys,
                                                                          one_thread) -> None:
    out = tmp_path / "run"
    result = train(_cfg(store, out, {"epochs": 5}, max_steps=3, steps_per_epoch=3))
    assert result["stopped"] == "max_steps" and result["epochs"] == 1 and len(result["epoch_losses"]) == 1
    assert (out / "best.pt").is_file()  # the epoch's validation ran
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--no-progress"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["stopped"] is None and doc["epochs"] == 2 and doc["steps"] == 3  # one more whole epoch


def test_a_run_without_dropout_resumes_under_a_recipe_with_it(store: Path, tmp_path: Path, one_thread) -> None:
    out = tmp_path / "run"
    train(_cfg(store, out, {"epochs": 1, "token_dropout": 0.0, "encoder_dropout": 0.0}))
    resumed = train(_cfg(store, out, {"epochs": 2}), resume=str(out / "last.pt"))
    assert resumed["epochs"] == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_a_training_epoch_is_one_pass_and_resumes_without_repeats_or_gaps(store: Path, workers: int) -> None:
    from student.data import skip_remainder

    dataset = open_split(store, "train2017", train=True, batch_size=5, seed=0)  # 24 samples: not whole batches

    def epoch(skip: int = 0) -> list[list[str]]:
        dataset.set_epoch(3, skip)
        batches = iter(make_loader(dataset, workers=workers))
        for _ in range(skip_remainder(skip, workers)):
            next(batches)
        return [list(b["key"]) for b in batches]

    full = epoch()
    slots = max(1, workers)
    assert len(full) == slots * -(-24 // (slots * 5))  # every loader worker gives the same whole batches
    assert all(len(b) == 5 for b in full)
    keys = [k for b in full for k in b]
    assert set(keys) == set(_train_keys(store)) and len(keys) - len(set(keys)) < slots * 5  # padding only
    assert epoch(skip=3) == full[3:]  # a resumed epoch neither repeats nor skips
    assert epoch() == full


def _train_keys(store: Path) -> list[str]:
    from shards.reader import StoreReader

    return [s["__key__"] for s in StoreReader(store, "train2017", ["caption"])]


def test_student_train_epochs_are_one_pass_by_default(store: Path, tmp_path: Path, one_thread) -> None:
    full = train(_cfg(store, tmp_path / "full", steps_per_epoch=0))
    assert len(full["losses"]) == 2 * 6 and full["epochs"] == 2  # 24 samples in batches of 4, two epochs
    first = train(_cfg(store, tmp_path / "split", steps_per_epoch=0), stop_at_step=8)  # inside epoch 2
    rest = train(_cfg(store, tmp_path / "split", steps_per_epoch=0), resume=str(tmp_path / "split" / "last.pt"))
    assert np.allclose(first["losses"] + rest["losses"], full["losses"], rtol=1e-5, atol=1e-6)


def test_channels_last_trains_the_same_steps(store: Path, tmp_path: Path, one_thread) -> None:
    """The NHWC layout option (speed only): the same loss and gradients from the same weights and batch, to float
    rounding, and the same loss curve over a short run. (Weights after several Adam steps are no fair comparison:
    Adam moves a weight whose gradient is near zero, a bias before BatchNorm, by about lr on rounding noise alone.)"""
    from student.loss import compute_loss
    from student.model import YMapNet

    dataset = open_split(store, "train2017", train=True, batch_size=4, seed=0)
    dataset.set_epoch(0)
    host = next(iter(make_loader(dataset, workers=0)))
    torch.manual_seed(0)
    plain = YMapNet(ModelConfig.tiny(SIZE)).train()
    nhwc = YMapNet(ModelConfig.tiny(SIZE)).to(memory_format=torch.channels_last).train()
    nhwc.load_state_dict(plain.state_dict())
    gains = Recipe().gains()
    losses, grads = [], []
    for model, channels_last in ((plain, False), (nhwc, True)):
        batch = to_device(host, torch.device("cpu"), channels_last)
        assert batch["images"].is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.manual_seed(1)  # the same dropout masks
        loss, _ = compute_loss(model(batch["images"]), batch["targets"], batch["pose_mask"], batch["glove"], None,
                               gains, 1.0)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.contiguous() for n, p in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    # each gradient against its own scale; those near zero (a bias before BatchNorm: ~1e-7) are rounding alone
    worst = max(((grads[1][n] - g).abs().max() / g.abs().max()).item() for n, g in grads[0].items()
                if g.abs().max() > 1e-4)
    assert worst < 1e-3, worst
    a = train(_cfg(store, tmp_path / "plain", {"epochs": 1}))
    b = train(_cfg(store, tmp_path / "nhwc", {"epochs": 1}, channels_last=True))
    assert len(a["losses"]) == 3 and a["losses"][0] != a["losses"][2]  # a curve that moves
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-4)


def test_channels_last_reaches_the_model_and_a_resume_takes_the_layout_it_is_given(store: Path, tmp_path: Path,
                                                                                     monkeypatch, one_thread) -> None:
    out = tmp_path / "run"
    assert train(_cfg(store, out, {"epochs": 1}))["epochs"] == 1
    payload = torch.load(out / "last.pt", weights_only=True)
    conv = next(k for k, v in payload["model"].items() if v.dim() == 4 and v.shape[1] > 1 and v.shape[2] > 1)
    assert payload["model"][conv].is_contiguous()  # plain
    payload["train_cfg"]["compile"] = True  # as a compiled run saves it: the resume must not compile on its word
    torch.save(payload, out / "last.pt")

    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile was not asked for by the command")

    monkeypatch.setattr(torch, "compile", no_compile)
    assert cli.main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--channels-last", "--no-progress",
                     "--no-tensorboard"]) == 0
    payload = torch.load(out / "last.pt", weights_only=True)
    assert payload["epoch"] == 2 and payload["train_cfg"]["channels_last"] and not payload["train_cfg"]["compile"]
    assert payload["model"][conv].is_contiguous(memory_format=torch.channels_last)  # the option reached the model
    index = list(payload["model"]).index(conv)  # and Adam's moments follow the new layout
    moments = payload["optimizer"]["state"][index]
    assert moments["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    assert moments["exp_avg_sq"].is_contiguous(memory_format=torch.channels_last)
