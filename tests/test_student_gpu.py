"""The student on a CUDA device: host->device batches, FP32 and bf16 training, resume, and CPU/GPU agreement.

Run with ``pytest -m gpu`` on a machine with a GPU; skipped everywhere else (the default run excludes them).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.synthetic import write_synthetic_store
from student.checkpoint import load_checkpoint
from student.config import ModelConfig, TrainConfig
from student.data import make_loader, open_split, to_device
from student.model import YMapNet
from student.predict import Predictor
from student.recipe import Recipe
from student.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SIZE = 64


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu_store")
    write_synthetic_store(root, "train2017", 32, 8, size=SIZE, seed=0)
    write_synthetic_store(root, "val2017", 8, 4, size=SIZE, seed=1)
    return root


def _cfg(store: Path, out: Path, epochs: int = 2, **kw) -> TrainConfig:
    recipe = Recipe.from_dict({"epochs": epochs, "batch_size": 8, "lr": 1e-3})
    base = TrainConfig(shards=str(store), out=str(out), model="tiny", recipe=recipe, steps_per_epoch=4, workers=2,
                       tensorboard=False, progress=False, shuffle_buffer=8, device="cuda")
    return replace(base, **kw)


def test_batches_arrive_pinned_and_become_float_targets_on_the_device(store: Path) -> None:
    ds = open_split(store, "train2017", train=True, batch_size=4, seed=0)
    ds.set_epoch(0)
    host = next(iter(make_loader(ds, workers=1, pin_memory=True)))
    assert all(v.is_pinned() for v in host.values() if isinstance(v, torch.Tensor))
    assert host["image"].dtype == torch.uint8
    batch = to_device(host, torch.device("cuda"))
    torch.cuda.synchronize()
    assert batch["images"].is_cuda and batch["images"].dtype == torch.uint8
    assert batch["targets"].is_cuda and batch["targets"].dtype == torch.float32
    assert batch["targets"].shape == (4, 44, SIZE, SIZE)
    on_cpu = to_device(host, torch.device("cpu"))  # the same conversion on the host is the reference
    for name in ("targets", "glove", "pose_mask"):  # the same integer->float maps up to float rounding
        diff = (batch[name].cpu() - on_cpu[name]).abs().max().item()
        assert diff <= 1e-6, (name, diff)


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_training_on_the_gpu_lowers_the_loss_and_keeps_fp32_weights(store: Path, tmp_path: Path, amp: str) -> None:
    result = train(_cfg(store, tmp_path / amp, amp=amp, epochs=3))
    losses = result["losses"]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    model, _, _ = load_checkpoint(tmp_path / amp / "last.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.isfinite(result["val"]["loss"])


def test_resumed_gpu_run_follows_the_uninterrupted_loss_curve(store: Path, tmp_path: Path) -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    full = train(_cfg(store, tmp_path / "full"))
    first = train(_cfg(store, tmp_path / "split"), stop_at_step=5)
    rest = train(_cfg(store, tmp_path / "split"), resume=str(tmp_path / "split" / "last.pt"))
    assert len(first["losses"]) == 5 and len(rest["losses"]) == 3
    assert np.allclose(first["losses"] + rest["losses"], full["losses"], rtol=1e-4, atol=1e-6)


def test_gpu_and_cpu_predictions_agree(tiny_checkpoint: str) -> None:
    from skimage import data

    image = data.astronaut()
    outputs = []
    for device in ("cpu", "cuda"):
        model, cfg, _ = load_checkpoint(tiny_checkpoint)
        outputs.append(Predictor(model, cfg.image_size, device=device, refine="paper")(image))
    cpu, gpu = outputs
    assert np.abs(cpu.maps - gpu.maps).max() < 1e-3
    # the refinement iterates 35 times on maps that differ by float rounding: close, not equal
    depth_diff = np.abs(cpu.depth - gpu.depth)
    assert depth_diff.mean() < 2e-3 and depth_diff.max() < 5e-2, (depth_diff.mean(), depth_diff.max())


def test_paper_network_fp32_on_gpu_matches_cpu_and_bf16_stays_close() -> None:
    torch.manual_seed(0)
    model = YMapNet(ModelConfig.paper()).eval()
    images = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    with torch.no_grad():
        cpu = model(images)
        model.cuda()
        gpu = model(images.cuda())
        with torch.autocast("cuda", torch.bfloat16):
            bf16 = model(images.cuda())
    for name in ("maps", "tokens"):
        ref = cpu[name]
        assert torch.allclose(gpu[name].float().cpu(), ref, atol=2e-3), name
        assert (bf16[name].float().cpu() - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3, name


@pytest.mark.parametrize("amp, rtol", [("none", 1e-3), ("bf16", 3e-2)])
@pytest.mark.parametrize("option", ["channels_last", "compile", "prefetch"])
def test_speed_options_follow_the_same_loss_curve(store: Path, tmp_path: Path, monkeypatch, amp: str, rtol: float,
                                                  option: str) -> None:
    """channels-last, torch.compile and the side-stream copies of the next batch (on by default: compared with
    --no-prefetch here; fused Adam is on for every CUDA run) change speed, not the curve. FP32 without TF32, so
    that the two runs' convolutions round alike."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    plain = train(_cfg(store, tmp_path / "plain", amp=amp, workers=0))
    fast = train(_cfg(store, tmp_path / "fast", amp=amp, workers=0, **{option: option != "prefetch"}))
    assert plain["losses"][0] != plain["losses"][-1]
    np.testing.assert_allclose(fast["losses"], plain["losses"], rtol=rtol)
    model, _, _ = load_checkpoint(tmp_path / "fast" / "last.pt")  # saved from the module, not the compiled wrapper
    assert next(model.parameters()).dtype == torch.float32


def test_fast_path_graph_on_the_gpu_gives_the_host_results_frame_by_frame(monkeypatch) -> None:
    """The captured CUDA graph reads each new frame (and batch size) and post-processes like the host."""
    from student.fastpath import FastPredictor
    from student_scenes import SIZE as SCENE, Fixed, photo, scene

    maps, tokens = scene()
    frames = [photo(), np.zeros((80, 200, 3), np.uint8), photo()[::-1, :200].copy()]  # three letterboxes
    host = Predictor(Fixed(maps, tokens), SCENE, refine="paper", peak_threshold=0.3).predict_batch(frames)
    fast = FastPredictor(Fixed(maps, tokens), SCENE, device="cuda", refine="paper", peak_threshold=0.3,
                         channels_last=True, cuda_graph=True)
    got = [fast(frame) for frame in frames] + fast.predict_batch(frames[:2])  # batch 1 graph, then batch 2
    for a, b in zip(host + host[:2], got):
        assert len(a.people) == len(b.people)
        for p, q in zip(a.people, b.people):
            np.testing.assert_allclose(q.keypoints, p.keypoints, atol=1e-4, equal_nan=True)
        np.testing.assert_allclose(b.depth, a.depth, atol=1e-4)
    assert sorted(fast._graphs) == [1, 2]

    # a real network, FP32 without TF32: the graph's maps are the eager ones, per frame
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = YMapNet(ModelConfig.tiny(image_size=SIZE)).cuda().eval()
    eager = Predictor(model, SIZE, device="cuda", refine="paper")
    expected = [eager(frame) for frame in frames]
    twin = YMapNet(ModelConfig.tiny(image_size=SIZE)).cuda().eval()
    twin.load_state_dict(model.state_dict())
    graph = FastPredictor(twin, SIZE, device="cuda", refine="paper", channels_last=True, cuda_graph=True)
    for frame, e in zip(frames, expected):
        g = graph(frame)
        np.testing.assert_allclose(g.maps, e.maps, atol=1e-4)
        np.testing.assert_allclose(g.depth, e.depth, atol=1e-3)
    bf16 = FastPredictor(YMapNet(ModelConfig.tiny(image_size=SIZE)).cuda().eval(), SIZE, device="cuda",
                         refine="none", amp="bf16", channels_last=True, cuda_graph=True)
    bf16.model.load_state_dict(model.state_dict())
    b = bf16(frames[0])
    assert 0 < np.abs(b.maps - expected[0].maps).max() < 0.05
