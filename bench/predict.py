"""Benchmark of `student predict`: the paper's inference experiment, then frames/s end to end, eager and fast path.

1. The paper's experiment (its section IV: 25.4 Hz and 4.71 GB at batch 1, FP32, on a consumer GPU): the paper
   network's batch-1 forward rate with random weights in FP32 (on CUDA also with TF32 convolutions, PyTorch's
   default), its peak device memory (CUDA: allocated by tensors, reserved, and the device's memory in use with
   the CUDA context) and the share of the time spent in convolutions (torch.profiler).
2. End to end on a real photo (letterbox, network, joint peaks, skeleton grouping, depth refinement, word
   decoding): ``Predictor`` (post-processing on the host, numpy/OpenCV) against ``FastPredictor``
   (``student.fastpath``: post-processing on the device in fixed-shape steps, channels-last; on CUDA replayed
   as CUDA graphs, FP32 and bf16, without and with the maps copied back; with --compile also torch.compile).
   Each variant's results are compared with the eager FP32 ones (depth, people).
3. The post-processing (with letterboxing and the copies back) on a perfect student's maps: the targets of a
   synthetic scene with people (``shards.synthetic``), host against device, so that grouping costs what it costs
   on a real scene (a random network's maps have almost no joints).

Every rate is 1 / the median frame time (the end-to-end variants run interleaved, frame by frame). Prints tables,
then one JSON line with the targets beside the figures (issue 23: >= 200 frames/s end to end, bf16 fast path, on
one H100-class GPU). Options: --device, --frames, --paper-frames, --skip-paper, --skip-experiment, --compile,
--profile-frames.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own progress lines

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

# the repository root first: bench/student.py would otherwise shadow the student package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from student.config import ModelConfig  # noqa: E402
from student.fastpath import FastPredictor  # noqa: E402
from student.model import YMapNet  # noqa: E402
from student.predict import Predictor  # noqa: E402
from student.targets import TargetSizes  # noqa: E402
from student.values import perfect_outputs, synthetic_scene  # noqa: E402

PAPER_GPU_HZ = 25.4  # the paper's FP32 inference rate on a consumer GPU (network only)
PAPER_GPU_GB = 4.71  # and its memory
FAST_TARGET_FPS = 200.0  # end to end, bf16 fast path, one H100-class GPU (8x the paper)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def paper_experiment(cfg: ModelConfig, device: str, frames: int, profile_frames: int) -> dict[str, float | None]:
    """Batch-1 forward frames/s of a random network in FP32 (on CUDA also with cuDNN's TF32 convolutions, PyTorch's
    default and TensorFlow's on recent GPUs), its peak device memory and its convolutions' share of the time."""
    model = YMapNet(cfg).to(device).eval()
    x = torch.randint(0, 256, (1, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    cuda = device.startswith("cuda")
    out: dict[str, float | None] = {}
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        with torch.no_grad():
            for name, allow in (("fp32", False), ("tf32", True)) if cuda else (("fp32", False),):
                torch.backends.cudnn.allow_tf32 = allow
                model(x)  # warm-up (cuDNN's algorithm choice)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                out[f"{name}_fps"] = 1 / float(np.median([_timed(lambda: model(x), device) for _ in range(frames)]))
                if name == "fp32":
                    out["conv_share"] = conv_share(model, x, device, profile_frames)
                    if cuda:
                        free, total = torch.cuda.mem_get_info()
                        out.update(peak_gb=torch.cuda.max_memory_allocated() / 1e9,
                                   reserved_gb=torch.cuda.max_memory_reserved() / 1e9,
                                   device_used_gb=(total - free) / 1e9)  # with the CUDA context and cuDNN's own
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return out


def conv_share(model: torch.nn.Module, x: torch.Tensor, device: str, frames: int) -> float:
    """Share of the forward's device time (CPU time on the CPU) in convolutions, transposed ones too, with what
    they call (a bias add, a layout copy): each outermost convolution operator's total time over the total time
    of the outermost operators."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(frames):
            model(x)
        _sync(device)
    field = "device_time_total" if cuda else "cpu_time_total"

    def inside_conv(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if "conv" in parent.name.lower():
                return True
            parent = parent.cpu_parent
        return False

    ops = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    total = sum(float(getattr(e, field)) for e in ops if e.cpu_parent is None)
    conv = sum(float(getattr(e, field)) for e in ops if "conv" in e.name.lower() and not inside_conv(e))
    return conv / total if total else 0.0


def variants(device: str, compile_too: bool) -> list[tuple[str, dict]]:
    """(name, FastPredictor options) of the fast path to time on ``device``: without the maps (what a robot
    uses: people, depth, words), and once with them (what ``student predict --fast`` copies back for its panels)."""
    base = {"channels_last": True, "cuda_graph": device.startswith("cuda"), "keep_maps": False}
    tag = " graph" if base["cuda_graph"] else ""
    out = [(f"fast fp32{tag}", base), (f"fast bf16{tag}", {**base, "amp": "bf16"}),
           (f"fast bf16{tag} + maps", {**base, "amp": "bf16", "keep_maps": True})]
    if compile_too:
        out.append((f"fast bf16{tag} compile", {**base, "amp": "bf16", "compile": True}))
    return out


def end_to_end(cfg: ModelConfig, photo: np.ndarray, device: str, frames: int, compile_too: bool) -> list[dict]:
    """Frames/s of Predictor and of each fast variant on ``photo``, interleaved frame by frame, with how far each
    variant's depth and people are from the eager FP32 results."""
    torch.manual_seed(0)
    model = YMapNet(cfg).to(device).eval()
    eager = Predictor(model, cfg.image_size, device=device, refine="paper")
    reference = eager(photo)
    runners = [("eager fp32 (host post)", eager)]
    for name, options in variants(device, compile_too):
        fresh = YMapNet(cfg).to(device).eval()
        fresh.load_state_dict(model.state_dict())  # FastPredictor converts its model's layout in place
        runners.append((name, FastPredictor(fresh, cfg.image_size, device=device, refine="paper", **options)))
    rows = []
    for name, runner in runners:
        start = time.perf_counter()
        pred = runner(photo)  # warm-up: graph capture, compilation
        rows.append({"variant": name, "setup_s": time.perf_counter() - start,
                     "depth_diff": float(np.abs(pred.depth - reference.depth).max()),
                     "people": len(pred.people), "times": []})
    for _ in range(frames):
        for row, (_, runner) in zip(rows, runners):
            row["times"].append(_timed(lambda: runner(photo), device))
    for row, (_, runner) in zip(rows, runners):
        row["fps"] = 1 / float(np.median(row.pop("times")))
        row["fallbacks"] = getattr(runner, "fallbacks", 0)
    return rows


class SceneMaps(torch.nn.Module):
    """A perfect student for one synthetic scene with at least 3 people: its maps are the scene's targets."""

    def __init__(self, size: int, seed: int = 0) -> None:
        super().__init__()
        sample = synthetic_scene(3, size, seed)
        maps, tokens = perfect_outputs(sample, *TargetSizes().at(None))
        self.people = len(sample.keypoints)
        self.register_buffer("maps", torch.from_numpy(maps))
        self.register_buffer("tokens", torch.from_numpy(tokens))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        return {"maps": self.maps.expand(b, -1, -1, -1), "tokens": self.tokens.expand(b, -1, -1)}


def post_on_a_scene(size: int, device: str, frames: int) -> dict[str, float]:
    """Post-processing milliseconds on a perfect student's maps: host (Predictor) against device (fast path)."""
    scene = SceneMaps(size).to(device)
    image = np.zeros((size, size, 3), np.uint8)
    host = Predictor(scene, size, device=device, refine="paper")
    fast = FastPredictor(scene, size, device=device, refine="paper", keep_maps=False,
                         cuda_graph=device.startswith("cuda"))
    a, b = host(image), fast(image)
    times: dict[str, list[float]] = {"host": [], "device": []}
    for _ in range(frames):
        times["host"].append(_timed(lambda: host(image), device))
        times["device"].append(_timed(lambda: fast(image), device))
    same = len(a.people) == len(b.people) and all(
        np.allclose(p.keypoints, q.keypoints, atol=1e-3, equal_nan=True) for p, q in zip(a.people, b.people))
    return {"people": scene.people, "found_host": len(a.people), "found_device": len(b.people),
            "same_people": same, "host_ms": float(np.median(times["host"])) * 1e3,
            "device_ms": float(np.median(times["device"])) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=10, help="timed frames of the tiny configuration")
    parser.add_argument("--paper-frames", type=int, default=0,
                        help="timed frames of the paper configuration (default: 2 on CPU, 100 on GPU)")
    parser.add_argument("--profile-frames", type=int, default=0, help="profiled frames (default: 1 on CPU, 20 on GPU)")
    parser.add_argument("--skip-paper", action="store_true", help="the tiny configuration only")
    parser.add_argument("--skip-experiment", action="store_true",
                        help="skip the paper's batch-1 experiment (network speed, memory, profile)")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile "
                                                                 "(minutes of compilation for the paper network)")
    args = parser.parse_args()
    device = args.device
    cuda = device.startswith("cuda")
    paper_frames = args.paper_frames or (100 if cuda else 2)
    profile_frames = args.profile_frames or (20 if cuda else 1)
    photo = data.astronaut()
    configs = [("tiny", ModelConfig.tiny(), args.frames)]
    if not args.skip_paper:
        configs.append(("paper", ModelConfig.paper(), paper_frames))
    name_of = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"student predict on {name_of}, photo 512x512, random weights")
    figures: dict[str, object] = {"bench": "predict", "device": name_of}

    if not (args.skip_paper or args.skip_experiment):
        paper = paper_experiment(ModelConfig.paper(), device, paper_frames, profile_frames)
        print(f"\nthe paper's experiment: batch 1, {ModelConfig.paper().image_size} px, network only (paper: "
              f"{PAPER_GPU_HZ} Hz and {PAPER_GPU_GB} GB, FP32, on a consumer GPU)")
        rates = f"FP32 {paper['fp32_fps']:.2f} frames/s" + (f", TF32 convolutions {paper['tf32_fps']:.2f}"
                                                            if "tf32_fps" in paper else "")
        memory = ("" if "peak_gb" not in paper else f"; memory: peak allocated {paper['peak_gb']:.2f} GB, reserved "
                  f"{paper['reserved_gb']:.2f} GB, device in use {paper['device_used_gb']:.2f} GB")
        print(f"  {rates}{memory}; convolutions {paper['conv_share']:.1%} of the FP32 time")
        figures.update({f"paper_{k}": round(v, 4) for k, v in paper.items()})
        figures["paper_fp32_vs_paper_gpu_hz"] = round(paper["fp32_fps"] / PAPER_GPU_HZ, 4)

    print(f"\n{'config':<7}{'variant':<26}{'frames/s':>10}{'ms':>9}{'setup s':>9}{'depth diff':>12}{'people':>8}"
          f"{'fallbacks':>11}")
    for name, cfg, frames in configs:
        for row in end_to_end(cfg, photo, device, frames, args.compile):
            print(f"{name:<7}{row['variant']:<26}{row['fps']:>10.2f}{1e3 / row['fps']:>9.2f}{row['setup_s']:>9.1f}"
                  f"{row['depth_diff']:>12.1e}{row['people']:>8}{row['fallbacks']:>11}")
            key = f"{name}_{row['variant'].split(' (')[0].replace(' + ', '_').replace(' ', '_')}"
            figures[f"{key}_fps"] = round(row["fps"], 2)
            figures[f"{key}_depth_diff"] = float(f"{row['depth_diff']:.2e}")
    scene = post_on_a_scene(256, device, args.frames)
    print(f"\npost-processing of a perfect student's maps (synthetic scene, 256 px, {scene['people']} people): "
          f"host {scene['host_ms']:.2f} ms, device {scene['device_ms']:.2f} ms; people found "
          f"{scene['found_host']} / {scene['found_device']}, the same: {scene['same_people']}")
    figures.update(scene_host_post_ms=round(scene["host_ms"], 3), scene_device_post_ms=round(scene["device_ms"], 3),
                   scene_same_people=scene["same_people"])
    if not args.skip_paper:  # the target is set for one H100-class GPU; people, depth and words, not the maps
        best = max(v for k, v in figures.items()
                   if k.startswith("paper_fast_bf16") and k.endswith("_fps") and "maps" not in k)
        figures.update(paper_fast_bf16_fps=best, target_paper_fast_bf16_fps=FAST_TARGET_FPS,
                       paper_fast_bf16_vs_target=round(best / FAST_TARGET_FPS, 4) if cuda else None)
        if not cuda:
            print(f"no GPU: the {FAST_TARGET_FPS:g} frames/s target is for one H100-class GPU")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
