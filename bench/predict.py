"""Benchmark of `student predict`: frames/s of model + post-processing, depth refinement on and off.

Runs the tiny and the paper configuration (random weights) on a real photo on the current device and
times the post-processing stages alone. Prints a table, then one JSON line. Options: --device, --frames,
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
from student.postprocess import find_peaks, group_people, refine_depth  # noqa: E402
from student.predict import Prediction, Predictor  # noqa: E402

PAPER_GPU_HZ = 25.4  # the paper's FP32 inference rate on a consumer GPU (network only)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def frames_per_second(predictor: Predictor, image: np.ndarray, frames: int,
                      device: str) -> tuple[float, Prediction]:
    """Frames/s of ``predictor`` on ``image`` (the model is already warm) and the last prediction."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(frames):
        pred = predictor(image)
    _sync(device)
    return frames / (time.perf_counter() - start), pred


def model_only(model: torch.nn.Module, size: int, frames: int, device: str) -> float:
    """Frames/s of the bare network on a uint8 batch of one (no letterbox, no post-processing); warms it up."""
    x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=device)
    with torch.no_grad():
        model(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(frames):
            model(x)
        _sync(device)
    return frames / (time.perf_counter() - start)


def postprocess_ms(maps: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Milliseconds of pose grouping and of depth refinement on one (44, S, S) output."""
    start = time.perf_counter()
    for _ in range(repeats):
        group_people(find_peaks(maps[CHANNELS["joints"].slice]), maps[CHANNELS["pafs"].slice])
    pose = (time.perf_counter() - start) / repeats * 1e3
    depth = (maps[CHANNELS["depth"].start] + 1) / 2
    start = time.perf_counter()
    for _ in range(repeats):
        refine_depth(depth, maps[CHANNELS["normals"].slice])
    return {"pose_ms": pose, "refine_ms": (time.perf_counter() - start) / repeats * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=10, help="timed frames of the tiny configuration")
    parser.add_argument("--paper-frames", type=int, default=0,
                        help="timed frames of the paper configuration (default: 1 on CPU, 50 on GPU)")
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    photo = data.astronaut()
    device = args.device
    paper_frames = args.paper_frames or (50 if device.startswith("cuda") else 1)
    configs = [("tiny", ModelConfig.tiny(), args.frames)]
    if not args.skip_paper:
        configs.append(("paper", ModelConfig.paper(), paper_frames))
    rows = {}
    for name, cfg, frames in configs:
        model = YMapNet(cfg).to(device).eval()
        row = {"image_size": cfg.image_size, "frames": frames,
               "model_fps": model_only(model, cfg.image_size, frames, device)}
        for refine in (False, True):
            predictor = Predictor(model, cfg.image_size, device=device, refine=refine)
            fps, pred = frames_per_second(predictor, photo, frames, device)
            row["fps_refine" if refine else "fps_no_refine"] = fps
        row.update(postprocess_ms(pred.maps))
        rows[name] = row
        del model, predictor
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
