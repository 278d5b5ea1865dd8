"""GPU check of ``build-targets`` on Ray: where the teachers run, and what the GPU changes in the store.

The demo train split is built twice with the same teachers: tiny RANDOM Depth Anything V2, DPText-DETR and
VisionGPT2 models in their real checkpoint formats, plus the ground-truth panoptic teacher. First on a local
Ray cluster of this machine with the default GPU layout (each model teacher gets its own actor pool and an
even share of the GPUs; the ground-truth teacher a GPU-free actor), then in-process on CPU. The table shows,
per teacher actor, its device and GPU share; the two builds' seconds and ``shards verify`` results; and,
per member of the store, how many samples differ between the GPU and the CPU build and by how much (float
kernels differ between devices and thread counts, so depth may move by a few 16-bit levels and scores in the
JSON members by rounding). Exit 1 when a build fails or the store does not verify. One JSON line at the end.

With ``--busy`` it measures instead how busy the GPU keeps during a teacher-bound build (issue 23): ``--images``
(default 1000) 640x480 photos (bench/pipeline.py's bench split) built on Ray with all five model teachers at their
published sizes, random weights (ViTPose-B + RT-DETR R50, Depth Anything V2 Large, Detectron2 panoptic FPN R101,
DPText-DETR R50, VisionGPT2), every GPU's utilisation sampled by ``nvidia-smi`` every 100 ms (the fraction of
time a kernel ran). Then each teacher alone on the same GPU over ``--standalone-images`` of the photos. Figures:
GPU busy over the build after its fixed start-up (planning, teacher actors loading; reported on its own), build
images/s, and the build's time after start-up over the sum of the teachers' standalone times. Target: GPU busy
>= 90%. Without a GPU it reports "no GPU"; ``--dry-run`` then runs the same steps on CPU with tiny teachers.

    python bench/gpu_pipeline.py [--actors-per-teacher 2] [--gpus-per-teacher F] [--dtype float16]
    python bench/gpu_pipeline.py --busy [--images 1000] [--batch-size 16] [--dtype float16] [--dry-run]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
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


#: teacher of each stage in the --busy build, with the bench/teachers.py case that writes its full-size checkpoint
BUSY_TEACHERS = {"pose": "vitpose", "depth": "depth-anything-v2", "panoptic": "detectron2-panoptic-fpn",
                 "text": "dptext-detr", "caption": "visiongpt2"}
BUSY_TARGET = 0.90


def _bench_module(name: str) -> Any:
    """Another bench script of this folder, loaded by path (its name would hide a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class GpuSampler(threading.Thread):
    """``nvidia-smi``'s utilisation of every GPU every ``period_ms``: (wall time of the sample, GPU index, percent),
    timed by nvidia-smi's own timestamps (its output may reach the pipe in bursts)."""

    def __init__(self, period_ms: int = 100) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int, float]] = []
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,index,utilization.gpu",
                                      "--format=csv,noheader,nounits", "-lms", str(period_ms)],
                                     stdout=subprocess.PIPE, text=True)

    def run(self) -> None:
        from datetime import datetime

        for line in self.proc.stdout:
            try:
                stamp, index, util = (field.strip() for field in line.split(","))
                when = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()  # local time, as time.time()
                self.samples.append((when, int(index), float(util)))
            except ValueError:
                continue  # "[N/A]" or a partial line

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.join(timeout=10)

    def busy(self, start: float, end: float) -> dict[int, float]:
        """Mean utilisation (0..1) of each GPU over the samples taken in [start, end] (``time.time()``)."""
        per: dict[int, list[float]] = {}
        for t, index, util in self.samples:
            if start <= t <= end:
                per.setdefault(index, []).append(util / 100.0)
        return {index: float(np.mean(v)) for index, v in sorted(per.items())}

    def active(self, start: float, end: float) -> tuple[float, float]:
        """From the first to the last sample in [start, end] in which some GPU was busy: the teachers' part of the
        build, without the CPU-only work before and after it."""
        busy = [t for t, _, util in self.samples if start <= t <= end and util > 0]
        return (min(busy), max(busy)) if busy else (start, end)


def busy_run(args: argparse.Namespace) -> int:
    """``--busy``: the GPU's busy fraction during a build with the published teacher sizes, and the build against
    the sum of the teachers' standalone times."""
    import ray
    import torch

    from pipeline.build import BuildConfig, build_targets
    from pipeline.coco import load_split
    from pipeline.demo import make_demo
    from pipeline.samples import decode_image
    from teachers import TeacherInput, create_teacher
    from teachers.tiny import save_tiny_checkpoint

    gpu = torch.cuda.is_available()
    if not gpu and not args.dry_run:
        print("no GPU: --busy measures a GPU (--dry-run runs its steps on CPU with tiny teachers)")
        print(json.dumps({"bench": "gpu_pipeline_busy", "gpu": None}))
        return 0
    device = "cuda" if gpu and not args.dry_run else "cpu"
    bench_teachers = _bench_module("teachers")
    cases = {c.name: c for c in bench_teachers.CASES}
    work = Path(tempfile.mkdtemp(prefix="gpu-busy-"))
    try:
        demo = make_demo(work / "demo")
        root = work / "coco"
        files = _bench_module("pipeline").make_bench_root(demo, root, args.images, link=True)
        teachers: dict[str, Any] = {}
        for stage, name in BUSY_TEACHERS.items():
            folder = str(work / "checkpoints" / name)
            if args.dry_run:
                checkpoint, params = save_tiny_checkpoint(name, folder), dict(cases[name].tiny_kwargs)
            else:
                checkpoint, params = cases[name].full(folder), dict(cases[name].full_kwargs)
            teachers.update({f"{stage}_teacher": name, f"{stage}_checkpoint": checkpoint, f"{stage}_params": params})
        config = BuildConfig(coco_root=str(root), split="train2017", out=str(work / "store"), executor="ray",
                             shard_size=args.shard_size, batch_size=args.batch_size, device=device, dtype=args.dtype,
                             progress=False, glove=str(demo / "glove" / "glove.demo.300d.txt"),
                             actors_per_teacher=args.actors_per_teacher, gpus_per_teacher=args.gpus_per_teacher,
                             **teachers)
        sampler = GpuSampler() if gpu else None
        if sampler is not None:
            sampler.start()
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        try:
            t0 = time.time()  # wall clock, as nvidia-smi's timestamps
            report = build_targets(config)
            t1 = time.time()
        finally:
            ray.shutdown()
            if sampler is not None:
                sampler.stop()
        if not report["ok"]:
            print(f"the build failed: {report['failures'][:1]}", file=sys.stderr)
            return 1
        wall, setup = t1 - t0, float(report["setup_seconds"])
        busy = sampler.busy(t0 + setup, t1) if sampler is not None else {}
        busy_whole = sampler.busy(t0, t1) if sampler is not None else {}
        window = sampler.active(t0 + setup, t1) if sampler is not None else (t0 + setup, t1)
        busy_active = sampler.busy(*window) if sampler is not None else {}

        # each teacher alone on the same device, over photos of the split
        records = list(load_split(root, "train2017"))[:args.standalone_images]
        inputs = [TeacherInput(decode_image(rec.path), rec.image_id, rec.to_record()) for rec in records]
        standalone: dict[str, float] = {}
        for stage, name in BUSY_TEACHERS.items():
            teacher = create_teacher(name, device=device, dtype=args.dtype, batch_size=args.batch_size,
                                     checkpoint=teachers[f"{stage}_checkpoint"], **teachers[f"{stage}_params"])
            # a warm-up pass, then a timed one (the teacher calls its model batch_size images at a time)
            standalone[name] = bench_teachers._images_per_s(functools.partial(teacher, inputs), len(inputs), device)
            del teacher
            if gpu:
                torch.cuda.empty_cache()
        n = len(files)
        floor = sum(n / rate for rate in standalone.values())  # the teachers one after another on one device
        after = wall - setup
        name_of = torch.cuda.get_device_name(0) if gpu else "cpu (dry run, tiny teachers)"
        print(f"build of {n} photos on {name_of}, {report['samples']} samples, batch {args.batch_size}, "
              f"{args.dtype}, {args.actors_per_teacher} actor(s) per teacher")
        print(f"{'teacher':<26}{'alone images/s':>16}")
        for name, rate in standalone.items():
            print(f"{name:<26}{rate:>16.2f}")
        print(f"{'sum of the standalone times':<26}{floor:>15.1f}s")
        print(f"{'build, whole':<26}{wall:>15.1f}s")
        print(f"{'  of which start-up':<26}{setup:>15.1f}s")
        print(f"{'  after start-up':<26}{after:>15.1f}s  ({n / after:.2f} images/s, {after / floor:.3f} x the sum)")
        for index, value in busy.items():
            print(f"GPU {index} busy after start-up {value:.1%} (whole build {busy_whole[index]:.1%}; from the "
                  f"first to the last busy sample, {window[1] - window[0]:.1f} s: "
                  f"{busy_active.get(index, 0.0):.1%}), target {BUSY_TARGET:.0%}")
        if not busy:
            print("no GPU: utilisation not sampled")
        print(json.dumps({"bench": "gpu_pipeline_busy", "gpu": name_of if gpu else None, "images": n,
                          "batch_size": args.batch_size, "dtype": args.dtype,
                          "actors_per_teacher": args.actors_per_teacher,
                          "standalone_images_per_s": {k: round(v, 3) for k, v in standalone.items()},
                          "standalone_sum_s": round(floor, 2), "build_s": round(wall, 2),
                          "startup_s": round(setup, 2), "build_images_per_s": round(n / after, 3),
                          "build_over_standalone_sum": round(after / floor, 4),
                          "gpu_busy": {str(k): round(v, 4) for k, v in busy.items()},
                          "gpu_busy_whole_build": {str(k): round(v, 4) for k, v in busy_whole.items()},
                          "gpu_busy_active": {str(k): round(v, 4) for k, v in busy_active.items()},
                          "active_s": round(window[1] - window[0], 2),
                          "min_gpu_busy": round(min(busy.values()), 4) if busy else None,
                          "target_min_gpu_busy": BUSY_TARGET}))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors-per-teacher", type=int, default=None,
                        help="actors per model teacher (default 2; 1 with --busy)")
    parser.add_argument("--dtype", default="float32", help="dtype of the model teachers on the GPU (float16, bfloat16)")
    parser.add_argument("--gpus-per-teacher", type=float, default=None,
                        help="GPU share per model-teacher actor (default: the build's, an even share; 0: all on CPU)")
    parser.add_argument("--busy", action="store_true",
                        help="instead: GPU busy fraction of a build with the published teacher sizes")
    parser.add_argument("--images", type=int, default=1000, help="with --busy: photos in the split")
    parser.add_argument("--batch-size", type=int, default=16, help="with --busy: images per teacher call")
    parser.add_argument("--shard-size", type=int, default=100, help="with --busy: samples per shard")
    parser.add_argument("--standalone-images", type=int, default=64,
                        help="with --busy: photos each teacher runs alone on")
    parser.add_argument("--dry-run", action="store_true", help="with --busy and no GPU: tiny teachers on CPU")
    args = parser.parse_args()
    if args.busy:
        args.actors_per_teacher = args.actors_per_teacher or 1
        return busy_run(args)
    args.actors_per_teacher = args.actors_per_teacher or 2

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
