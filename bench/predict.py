"""Benchmark of `student predict`: frames/s of model + post-processing, depth refinement on and off.

Runs the tiny and the paper configuration (random weights) on a real photo on the current device and
times the post-processing stages alone; every figure is 1 / the median frame time of interleaved runs.
Prints a table, then one JSON line. Options: --device, --frames,
--paper-frames, --skip-paper.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

# the repository root first: bench/student.py would otherwise shadow the student package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.taxonomy import CHANNELS  # noqa: E402
from student.config import ModelConfig  # noqa: E402
from student.model import YMapNet  # noqa: E402
from student.postprocess import find_peaks, group_people, refine_depth_paper  # noqa: E402
from student.predict import Predictor  # noqa: E402

PAPER_GPU_HZ = 25.4  # the paper's FP32 inference rate on a consumer GPU (network only)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def measure(model: torch.nn.Module, size: int, image: np.ndarray, frames: int, device: str) -> dict[str, float]:
    """Frames/s of the bare network, of predict without and with refinement, and post-processing times.

    The three are timed interleaved frame by frame and reported as 1 / median frame time, so that load from
    other processes hits all of them alike.
    """
    x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=device)
    plain = Predictor(model, size, device=device, refine="none")
    refined = Predictor(model, size, device=device, refine="paper")
    with torch.no_grad():
        model(x)  # warm-up
    times: dict[str, list[float]] = {"model": [], "no_refine": [], "refine": [], "pose": [], "depth": []}
    for _ in range(frames):
        with torch.no_grad():
            times["model"].append(_timed(lambda: model(x), device)[0])
        times["no_refine"].append(_timed(lambda: plain(image), device)[0])
        elapsed, pred = _timed(lambda: refined(image), device)
        times["refine"].append(elapsed)
        maps = pred.maps
        times["pose"].append(_timed(lambda: group_people(find_peaks(maps[CHANNELS["joints"].slice]),
                                                         maps[CHANNELS["pafs"].slice]), "cpu")[0])
        depth = (maps[CHANNELS["depth"].start] + 1) / 2
        times["depth"].append(_timed(lambda: refine_depth_paper(depth, maps[CHANNELS["normals"].slice]), "cpu")[0])
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model_fps": 1 / med["model"], "fps_no_refine": 1 / med["no_refine"], "fps_refine": 1 / med["refine"],
            "pose_ms": med["pose"] * 1e3, "refine_ms": med["depth"] * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=10, help="timed frames of the tiny configuration")
    parser.add_argument("--paper-frames", type=int, default=0,
                        help="timed frames of the paper configuration (default: 2 on CPU, 50 on GPU)")
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    photo = data.astronaut()
    device = args.device
    paper_frames = args.paper_frames or (50 if device.startswith("cuda") else 2)
    configs = [("tiny", ModelConfig.tiny(), args.frames)]
    if not args.skip_paper:
        configs.append(("paper", ModelConfig.paper(), paper_frames))
    rows = {}
    for name, cfg, frames in configs:
        model = YMapNet(cfg).to(device).eval()
        row = {"image_size": cfg.image_size, "frames": frames, **measure(model, cfg.image_size, photo, frames, device)}
        rows[name] = row
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"student predict on {device} ({torch.get_num_threads()} threads), photo 512x512, random weights")
    print(f"{'config':<7}{'size':>6}{'model fps':>11}{'predict fps':>13}{'+refine fps':>13}{'pose ms':>9}"
          f"{'refine ms':>11}")
    for name, r in rows.items():
        print(f"{name:<7}{r['image_size']:>6}{r['model_fps']:>11.2f}{r['fps_no_refine']:>13.2f}"
              f"{r['fps_refine']:>13.2f}{r['pose_ms']:>9.1f}{r['refine_ms']:>11.1f}")
    figures = {"bench": "predict", "device": device}
    for name, r in rows.items():
        figures.update({f"{name}_{k}": round(v, 3) if isinstance(v, float) else v for k, v in r.items()})
        figures[f"{name}_refine_cost_ratio"] = round(r["fps_no_refine"] / r["fps_refine"], 3)
    if "paper" in rows:
        figures["paper_fps_refine_vs_paper_gpu_hz"] = round(rows["paper"]["fps_refine"] / PAPER_GPU_HZ, 4)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
