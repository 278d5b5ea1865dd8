"""GPU check of ``build-targets`` on Ray: where the teachers run, and what the GPU changes in the store.

The demo train split is built twice with the same teachers: tiny RANDOM Depth Anything V2, DPText-DETR and
VisionGPT2 models in their real checkpoint formats, plus the ground-truth panoptic teacher. First on a local
Ray cluster of this machine with the default GPU layout (each model teacher gets its own actor pool and an
even share of the GPUs; the ground-truth teacher a GPU-free actor), then in-process on CPU. The table shows,
per teacher actor, its device and GPU share; the two builds' seconds and ``shards verify`` results; and,
per member of the store, how many samples differ between the GPU and the CPU build and by how much (float
kernels differ between devices and thread counts, so depth may move by a few 16-bit levels and scores in the
JSON members by rounding). Exit 1 when a build fails or the store does not verify. One JSON line at the end.

    python bench/gpu_pipeline.py [--actors-per-teacher 2] [--gpus-per-teacher F] [--dtype float16]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would hide the pipeline package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

MODEL_TEACHERS = {"pose": "vitpose", "depth": "depth-anything-v2", "text": "dptext-detr", "caption": "visiongpt2"}


def where(teacher: Any) -> dict[str, Any]:
    """A teacher unit: the process, device and GPU share of the actor that runs it."""
    import os

    import ray
    import torch

    device = str(teacher.device)
    return {"pid": os.getpid(), "device": device,
            "gpu_share": float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)),
            "gpu_name": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else ""}


def compare(a_root: Path, b_root: Path, split: str) -> dict[str, dict[str, Any]]:
    """Per member: samples that differ between two stores of the same split, and the largest difference of an
    array member."""
    from shards.reader import StoreReader

    out: dict[str, dict[str, Any]] = {}
    for sa, sb in zip(StoreReader(a_root, split), StoreReader(b_root, split), strict=True):
        assert sa["__key__"] == sb["__key__"], (sa["__key__"], sb["__key__"])
        for ext, va in sa.items():
            if ext.startswith("__"):
                continue
            vb = sb[ext]
            row = out.setdefault(ext, {"samples": 0, "differ": 0, "max_abs": None})
            row["samples"] += 1
            if isinstance(va, np.ndarray) and isinstance(vb, np.ndarray) and va.shape == vb.shape:
                diff = np.abs(va.astype(np.float64) - vb.astype(np.float64))
                row["differ"] += int(bool(diff.any()))
                row["max_abs"] = max(row["max_abs"] or 0.0, float(diff.max(initial=0.0)))
            else:  # JSON members (scores, scales): equal or not
                row["differ"] += int(not _equal(va, vb))
    return out


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and (a == b).all()
    return a == b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors-per-teacher", type=int, default=2)
    parser.add_argument("--dtype", default="float32", help="dtype of the model teachers on the GPU (float16, bfloat16)")
    parser.add_argument("--gpus-per-teacher", type=float, default=None,
                        help="GPU share per model-teacher actor (default: the build's, an even share; 0: all on CPU)")
    args = parser.parse_args()

    import ray
    import torch

    from pipeline.build import BuildConfig, build_targets
    from pipeline.demo import make_demo
    from pipeline.ray_executor import RayExecutor
    from pipeline.plan import load_teachers, teacher_factories
    from pipeline.stages import TEACHER_STAGES
    from shards.verify import verify_split
    from teachers.tiny import save_tiny_checkpoint

    if not torch.cuda.is_available():
        print("no CUDA device: this check needs one", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu-pipeline-"))
    try:
        demo = make_demo(work / "demo")
        teachers: dict[str, Any] = {"panoptic_teacher": "panoptic-gt"}
        for stage, name in MODEL_TEACHERS.items():
            teachers[f"{stage}_teacher"] = name
            teachers[f"{stage}_checkpoint"] = save_tiny_checkpoint(name, work / "checkpoints" / name)
        base = BuildConfig(coco_root=str(demo), split="train2017", shard_size=8, batch_size=4, progress=False,
                           glove=str(demo / "glove" / "glove.demo.300d.txt"), **teachers)
        on_gpu = BuildConfig(**{**base.__dict__, "out": str(work / "gpu"), "executor": "ray",
                                "actors_per_teacher": args.actors_per_teacher,
                                "gpus_per_teacher": args.gpus_per_teacher, "dtype": args.dtype})
        on_cpu = BuildConfig(**{**base.__dict__, "out": str(work / "cpu"), "executor": "local", "device": "cpu"})

        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0),
                                  "cluster_gpus": ray.cluster_resources().get("GPU", 0.0),
                                  "actors_per_teacher": args.actors_per_teacher,
                                  "gpus_per_teacher": args.gpus_per_teacher, "dtype": args.dtype}
        try:
            ex = RayExecutor(actors_per_teacher=args.actors_per_teacher, gpus_per_teacher=args.gpus_per_teacher,
                             retries=0, quiet=True)
            load_teachers(on_gpu, teacher_factories(on_gpu, list(TEACHER_STAGES)), ex)
            handles = [(s, ex.submit_teacher(s, where)) for s in TEACHER_STAGES
                       for _ in range(args.actors_per_teacher)]  # least-loaded: each actor of a pool once
            placed = [(s, ex.result(h)) for s, h in handles]
            ex.close()
            t0 = time.perf_counter()
            gpu_report = build_targets(on_gpu)
            result["gpu_build_s"] = round(time.perf_counter() - t0, 2)
        finally:
            ray.shutdown()
        t0 = time.perf_counter()
        cpu_report = build_targets(on_cpu)
        result["cpu_build_s"] = round(time.perf_counter() - t0, 2)
        faults = {name: [str(f) for f in verify_split(Path(cfg.out), "train2017").faults]
                  for name, cfg in (("gpu", on_gpu), ("cpu", on_cpu))}
        diffs = compare(Path(on_gpu.out), Path(on_cpu.out), "train2017")

        print(f"{'stage':<10}{'pid':>8}  {'device':<8}{'GPU share':>10}  gpu")
        for s, p in placed:
            print(f"{s:<10}{p['pid']:>8}  {p['device']:<8}{p['gpu_share']:>10.4f}  {p['gpu_name']}")
        print(f"\nbuild on Ray (GPU teachers): {result['gpu_build_s']:.2f} s, ok={gpu_report['ok']}, "
              f"samples={gpu_report['samples']}, verify faults={len(faults['gpu'])}")
        print(f"build in-process on CPU:     {result['cpu_build_s']:.2f} s, ok={cpu_report['ok']}, "
              f"samples={cpu_report['samples']}, verify faults={len(faults['cpu'])}")
        print(f"\n{'member':<16}{'samples':>8}{'differ':>8}{'max |GPU-CPU|':>15}")
        for ext, row in sorted(diffs.items()):
            largest = "-" if row["max_abs"] is None else f"{row['max_abs']:.4g}"
            print(f"{ext:<16}{row['samples']:>8}{row['differ']:>8}{largest:>15}")
        result.update({
            "placement": [{"stage": s, **p} for s, p in placed],
            "gpu_build_ok": gpu_report["ok"], "cpu_build_ok": cpu_report["ok"],
            "samples": gpu_report["samples"], "verify_faults": faults,
            "gpu_vs_cpu": diffs,
        })
        print(json.dumps(result))
        ok = gpu_report["ok"] and cpu_report["ok"] and not any(faults.values())
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
