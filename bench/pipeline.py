"""Benchmark of ``build-targets``: the whole build with identity-cost teachers, in-process and on Ray with 1
and 2 workers, next to a bare decode+resize loop over the same files, in one run.

The demo images are resized to 640x480 and repeated to ``--images`` files of a synthetic COCO split. Every
figure is measured here, in this run; the last line is one JSON object. Besides the build, the store's own
floor is timed on the built store: encoding every member once (codecs) and writing the encoded shards again
(tar, sha256, fsync, records); bare + encode + write is what any build of this store costs at least. The bare
loop and the in-process build run in ``--rounds`` interleaved rounds, then as many rounds of the Ray builds
with 1 and 2 workers (medians, and the medians of the per-round ratios, are reported: the machine's speed
drifts). Each Ray round starts a cluster of W CPUs on W cores: its raylet and the worker processes it forks
(the CPU tasks and the teacher actors: all of the build's work) run there. The driver, which only submits and
waits, and the head's daemons (GCS, agents, monitors) move to the machine's other cores where it has any, as
on a cluster's head node; ``--pin-all`` leaves them on the W cores too. The cluster's start,
up to the worker processes Ray boots with it, is left out, the start-up of the teacher actors is not (a fixed
cost; with CPU teachers one shared actor process, also timed on its own after the first round's builds).

With ``--teacher-bound`` the teachers sleep a fixed time per image instead (GPU stand-ins that use no CPU), each
in an actor of its own, and the figure is how close the Ray build comes to the slowest teacher's time: wall time
after the fixed start-up over images x that teacher's time per image (target <= 1.10).

With ``--memory`` it times nothing: it builds ``--images`` (default 6000) photos once in-process and once on a
2-worker Ray cluster and samples the memory (PSS) of this process and everything it started, per quarter of
each build: in-flight work is bounded, so the last quarter should peak no higher than the second.

    python bench/pipeline.py [--images 1200] [--shard-size 50] [--rounds 3] [--skip-ray] [--pin-all]
    python bench/pipeline.py --memory [--images 6000]
    python bench/pipeline.py --teacher-bound [--teacher-ms pose=10,depth=20,panoptic=12,text=8,caption=4]
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would hide the pipeline package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from teachers.base import Teacher, TeacherInput, TeacherSpec  # noqa: E402


class _Identity(Teacher):
    """A teacher that costs nothing beyond touching its input: the build's own work is what is measured. With
    ``ms_per_image`` it also sleeps that long per image: a stand-in for GPU work, which takes time and no CPU."""

    def __init__(self, *, ms_per_image: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ms_per_image = float(ms_per_image)

    def identity(self) -> dict[str, Any]:
        return {"bench": 1, "ms_per_image": self.ms_per_image}

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        if self.ms_per_image:
            time.sleep(self.ms_per_image * len(inputs) / 1000)
        return [self.one(inp) for inp in inputs]


class BenchPose(_Identity):
    name = "bench-pose"
    spec = TeacherSpec(task="pose", description="one standing person in the image's centre")

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        h, w = inp.image.shape[:2]
        rows = np.linspace(0.2 * h, 0.8 * h, 17, dtype=np.float32)
        keypoints = np.stack([np.full(17, w / 2, np.float32), rows, np.full(17, 2.0, np.float32)], 1)
        return {"persons": [{"keypoints": keypoints, "bbox": [0.4 * w, 0.2 * h, 0.2 * w, 0.6 * h], "score": 0.9,
                             "keypoint_scores": [0.9] * 17}], "crowd": []}


class BenchDepth(_Identity):
    name = "bench-depth"
    spec = TeacherSpec(task="depth", description="green channel as depth")

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        import cv2  # a contiguous float32 map, as a depth model returns

        return {"depth": cv2.extractChannel(inp.image, 1).astype(np.float32), "kind": "relative"}


class BenchPanoptic(_Identity):
    name = "bench-panoptic"
    spec = TeacherSpec(task="panoptic", description="red channel modulo 133")
    modulo = (np.arange(256) % 133).astype(np.uint8)

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        import cv2  # a table lookup: under half the time of numpy's % on the strided channel

        return {"classes": cv2.LUT(cv2.extractChannel(inp.image, 0), self.modulo)}


class BenchText(_Identity):
    name = "bench-text"
    spec = TeacherSpec(task="text", description="one fixed box")

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        return {"polygons": [np.array([[10, 10], [200, 10], [200, 60], [10, 60]], np.float32)], "scores": [0.9]}


class BenchCaption(_Identity):
    name = "bench-caption"
    spec = TeacherSpec(task="caption", description="the COCO captions")

    def one(self, inp: TeacherInput) -> dict[str, Any]:
        return {"captions": list(inp.record.get("captions") or ["a photo"])}


BENCH_TEACHERS = (BenchPose, BenchDepth, BenchPanoptic, BenchText, BenchCaption)


def make_bench_root(demo: Path, root: Path, n: int, link: bool = False) -> list[Path]:
    """A COCO-style split ``train2017`` of ``n`` 640x480 JPEGs cycling through the demo's good images (with
    ``link``, the repeats are hard links to the first copy: thousands of files in seconds)."""
    import cv2

    from pipeline.coco import load_split
    from pipeline.samples import RejectedImage, decode_image

    sources = []
    for rec in load_split(demo, "train2017"):
        try:
            sources.append((cv2.resize(decode_image(rec.path), (640, 480), interpolation=cv2.INTER_AREA),
                            rec.captions or ["a photo"]))
        except RejectedImage:
            continue
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, captions, files = [], [], []
    for i in range(n):
        rgb, caps = sources[i % len(sources)]
        path = root / "train2017" / f"{i + 1:012d}.jpg"
        if link and i >= len(sources):
            os.link(files[i % len(sources)], path)
        else:
            cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        files.append(path)
        images.append({"id": i + 1, "file_name": path.name, "width": 640, "height": 480})
        captions += [{"id": len(captions) + 1, "image_id": i + 1, "caption": c} for c in caps]
    person = [{"id": 1, "name": "person", "supercategory": "person"}]
    for kind, anns in (("instances", []), ("person_keypoints", []), ("captions", captions)):
        doc = {"images": images, "annotations": anns, **({} if kind == "captions" else {"categories": person})}
        (root / "annotations" / f"{kind}_train2017.json").write_text(json.dumps(doc))
    return files


def bare_loop(files: list[Path], size: int) -> float:
    """Seconds to read, decode and resize every file to the store's letterbox width: the floor to beat."""
    import cv2
    import simplejpeg

    t0 = time.perf_counter()
    for path in files:
        rgb = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB")
        h, w = rgb.shape[:2]
        s = size / max(h, w)
        cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    return time.perf_counter() - t0


def store_floor(store: Path, split: str, scratch: Path) -> tuple[float, float]:
    """Seconds to encode every member of every active column once, and to write the encoded shards again.

    The second figure is the writer's own cost (deterministic tar, sha256, fsync of file and folder, the
    column.json record) for the same bytes, written to ``scratch``; neither depends on the pipeline's code.
    """
    from pipeline.units import read_column_shard
    from shards.codecs import encode_sample
    from shards.manifest import load_manifest
    from shards.schema import column
    from shards.writer import ColumnWriter

    m = load_manifest(store / split)
    shards = [(name, fp, entry.name, read_column_shard(store / split, name, fp, entry.name))
              for name, fp in m.columns.items() for entry in m.shards]
    t0 = time.perf_counter()
    encoded = [(name, fp, shard, [(key, encode_sample(column(name), values)) for key, values in samples])
               for name, fp, shard, samples in shards]
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name, fp, shard, samples in encoded:
        ColumnWriter(scratch / split, name, fp).write_encoded_shard(shard, samples)
    return encode_s, time.perf_counter() - t0


def actor_startup(config: Any) -> float:
    """Seconds to start the teacher actors on the running Ray cluster until each has loaded its teacher."""
    from pipeline.executors import TeacherFactory
    from pipeline.ray_executor import RayExecutor

    factories = {s: TeacherFactory(cls, {"device": "cpu", "batch_size": config.batch_size})
                 for s, cls in zip(("depth", "panoptic", "text", "caption"), BENCH_TEACHERS)}
    ex = RayExecutor(retries=1)
    t0 = time.perf_counter()
    ex.start(factories)  # returns once every actor answered with its teacher's fingerprint
    seconds = time.perf_counter() - t0
    ex.close()
    return seconds


def spread_cores(cores: list[int]) -> list[int]:
    """``cores`` ordered so that the first ones sit on distinct physical cores: one hardware thread of each core
    first, their siblings after (two SMT siblings share one core's execution units; a 2-worker run on them
    measures hyper-threading, not Ray). Unchanged where the kernel does not say which threads are siblings."""
    firsts, rest, seen = [], [], set()
    for cpu in cores:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
        except OSError:
            return cores
        (rest if siblings in seen else firsts).append(cpu)
        seen.add(siblings)
    return firsts + rest


def _affinity() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _processes() -> dict[int, tuple[int, str]]:
    """Every process of this machine: pid -> (parent pid, command line)."""
    procs: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            procs[int(name)] = (int(stat.rsplit(")", 1)[1].split()[1]), Path(f"/proc/{name}/cmdline").read_text())
        except (ValueError, OSError):
            continue
    return procs


def _move_off_worker_cores(cores: list[int]) -> None:
    """Move this driver and the processes Ray started for it to ``cores``, every thread of them, except the
    raylet and the worker processes it forks (which inherit its cores): Ray's per-node daemon and the build's
    work stay on the worker cores, the head's daemons (GCS, agents, monitors) and the driver leave them."""
    procs = _processes()
    me = os.getpid()
    raylets = {pid for pid, (ppid, cmd) in procs.items() if ppid == me and "/raylet/raylet" in cmd}
    move = {me} | {pid for pid, (ppid, _) in procs.items() if ppid == me and pid not in raylets}
    move |= {pid for pid, (ppid, cmd) in procs.items() if ppid in raylets and "Agent" in cmd}
    for pid in move:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cores)
            except OSError:  # a thread that ended meanwhile
                continue


def tree_pss_mb(root: int) -> float:
    """Proportional set size of a process and all its descendants, in MB: pages shared between them (Ray's
    object store, copy-on-write pages) are counted once, split between the processes that map them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in _processes().items():
        children.setdefault(ppid, []).append(pid)
    total_kb, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # ended meanwhile
            continue
        total_kb += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total_kb / 1024


class MemorySampler(threading.Thread):
    """Samples (seconds since start, ``tree_pss_mb`` of this process) every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self._stop_event = interval, [], threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter() - self.t0, tree_pss_mb(os.getpid())))
            self._stop_event.wait(self.interval)

    def stop(self) -> list[tuple[float, float]]:
        self._stop_event.set()
        self.join()
        return self.samples


def quarter_peaks(samples: list[tuple[float, float]]) -> list[float]:
    """The largest sample in each quarter of the sampled time."""
    end = samples[-1][0] or 1.0
    peaks = [0.0] * 4
    for t, mb in samples:
        q = min(3, int(4 * t / end))
        peaks[q] = max(peaks[q], mb)
    return peaks


def memory_run(args: argparse.Namespace, base: Any, work: Path) -> None:
    """``--memory``: one in-process build and one on a 2-worker Ray cluster of the whole split, with the memory of
    this process and everything it started sampled throughout; memory is flat when the last quarter of a build
    peaks no higher than its second (the first holds the start-up: teachers, Ray's workers, malloc's pools)."""
    import ray

    from pipeline.build import BuildConfig
    from pipeline.ray_executor import RayExecutor

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    n, result, rows = args.images, {"images": args.images, "shard_size": args.shard_size}, []
    for key, label, executor in (("inprocess", "in-process", "local"), ("ray2", "Ray 2 workers", "ray")):
        out = work / f"memory-{key}"
        if executor == "ray":
            ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        sampler = MemorySampler()
        sampler.start()
        try:
            secs, _ = timed_build(BuildConfig(**{**base.__dict__, "out": str(out), "executor": executor}),
                                  RayExecutor(retries=1) if executor == "ray" else None)
        finally:
            samples = sampler.stop()
            if executor == "ray":
                ray.shutdown()
            shutil.rmtree(out, ignore_errors=True)
        peaks = quarter_peaks(samples)
        rows.append((label, secs, peaks))
        result.update({f"{key}_seconds": round(secs, 2), f"{key}_samples": len(samples),
                       f"{key}_peak_mb_by_quarter": [round(p) for p in peaks],
                       f"{key}_last_over_second_quarter": round(peaks[3] / peaks[1], 3) if peaks[1] else None})
    result["target_last_over_second_quarter"] = 1.1
    print(f"{'build':<16}{'seconds':>9}{'images/s':>10}   {'peak memory (PSS, MB) per quarter of the build':<48}")
    for label, secs, peaks in rows:
        print(f"{label:<16}{secs:>9.1f}{n / secs:>10.1f}   " + " ".join(f"{p:>9.0f}" for p in peaks))
    print(json.dumps(result))


TEACHER_MS = {"pose": 10.0, "depth": 20.0, "panoptic": 12.0, "text": 8.0, "caption": 4.0}


def teacher_bound_run(args: argparse.Namespace, base: Any, work: Path) -> None:
    """``--teacher-bound``: Ray builds whose teachers sleep a fixed time per image (as GPU work would take time
    and no CPU), each teacher in an actor of its own that overlaps its units as a GPU actor does. The slowest
    teacher sets the floor: images x its time per image. The figure is the build's wall time after its fixed
    start-up (planning, teacher actors loading) over that floor; at most 1.10: the slowest teacher is busy 90% of
    the build."""
    import ray

    from pipeline.build import BuildConfig
    from pipeline.ray_executor import RayExecutor

    ms = dict(TEACHER_MS)
    for item in filter(None, args.teacher_ms.split(",")):
        stage, _, value = item.partition("=")
        if stage not in ms:
            raise SystemExit(f"--teacher-ms: unknown stage {stage!r}; use {', '.join(ms)}")
        ms[stage] = float(value)
    n, slowest = args.images, max(ms, key=lambda s: ms[s])
    floor = n * ms[slowest] / 1000
    params = {f"{s}_params": {"ms_per_image": v} for s, v in ms.items()}
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    rounds = []
    for r in range(args.rounds):
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, logging_level=logging.WARNING)
        try:
            cfg = BuildConfig(**{**base.__dict__, **params, "out": str(work / f"bound{r}"), "executor": "ray",
                                 "max_inflight_shards": args.max_inflight_shards})
            secs, report = timed_build(cfg, RayExecutor(shared_actors=False, retries=1, overlap=args.overlap))
        finally:
            ray.shutdown()
            shutil.rmtree(work / f"bound{r}", ignore_errors=True)
        setup = report["setup_seconds"]
        rounds.append((secs, setup, {s: st["seconds"] for s, st in report["stages"].items()}))
    wall, setup = (statistics.median(col) for col in list(zip(*rounds))[:2])
    ratios = [(w - su) / floor for w, su, _ in rounds]
    ratio = statistics.median(ratios)
    print("teachers (ms per image, one actor each): " + ", ".join(f"{s} {v:g}" for s, v in ms.items()))
    print(f"{'run':<44}{'seconds':>10}")
    print(f"{'floor: images x slowest teacher (' + slowest + ')':<44}{floor:>10.2f}")
    print(f"{'build on Ray, whole':<44}{wall:>10.2f}")
    print(f"{'  of which start-up (plan, teacher actors)':<44}{setup:>10.2f}")
    print(f"{'  after start-up':<44}{wall - setup:>10.2f}")
    print(f"{'after start-up / floor':<44}{ratio:>10.2f}")
    print(json.dumps({"images": n, "shard_size": args.shard_size, "cores": len(os.sched_getaffinity(0)),
                      "max_inflight_shards": args.max_inflight_shards, "overlap": args.overlap,
                      "teacher_ms_per_image": ms,
                      "slowest_teacher": slowest, "floor_seconds": round(floor, 2),
                      "build_seconds": round(wall, 2), "startup_seconds": round(setup, 2),
                      "teacher_bound_over_floor_per_round": [round(v, 3) for v in ratios],
                      "stage_busy_s": rounds[0][2],
                      "teacher_bound_over_floor": round(ratio, 3), "target_teacher_bound_over_floor": 1.10}))


def timed_build(config: Any, executor: Any = None) -> tuple[float, dict[str, Any]]:
    from pipeline.build import build_targets

    t0 = time.perf_counter()
    report = build_targets(config, executor=executor)
    seconds = time.perf_counter() - t0
    if not report["ok"]:
        raise SystemExit(f"bench build failed: {report['failures'][:1]}")
    return seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None,
                        help="photos in the split (1200, the steady state the Ray targets are set at; "
                             "6000 with --memory)")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of bare loop + in-process build; medians are reported")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--pin-all", action="store_true",
                        help="Ray's own processes and the driver share the W workers' cores (default: other cores)")
    parser.add_argument("--memory", action="store_true",
                        help="instead of the timings: the memory of a long build, in-process and on Ray")
    parser.add_argument("--teacher-bound", action="store_true",
                        help="instead of the timings: Ray builds whose teachers sleep per image (GPU stand-ins); "
                             "wall time after start-up over images x the slowest teacher's time")
    parser.add_argument("--teacher-ms", default="",
                        help="with --teacher-bound: per-image sleep of some teachers, e.g. depth=30,text=5 "
                             f"(default {','.join(f'{k}={v:g}' for k, v in TEACHER_MS.items())})")
    parser.add_argument("--max-inflight-shards", type=int, default=4, help="with --teacher-bound: the build's")
    parser.add_argument("--no-overlap", dest="overlap", action="store_false",
                        help="with --teacher-bound: teacher actors run one unit at a time, as CPU actors do (by "
                             "default they overlap mapping and model calls, as GPU actors do)")
    args = parser.parse_args()
    args.images = args.images or (6000 if args.memory else 1200)

    from pipeline.build import BuildConfig
    from pipeline.demo import make_demo
    from teachers.registry import register_teacher

    for cls in BENCH_TEACHERS:
        register_teacher(cls.name, f"{__name__}:{cls.__name__}")
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # a run leaves ~400 MB of stores behind otherwise
    demo = make_demo(work / "demo")
    root = work / "coco"
    files = make_bench_root(demo, root, args.images, link=args.memory)
    base = BuildConfig(coco_root=str(root), split="train2017", size=args.size, shard_size=args.shard_size,
                       device="cpu", progress=False, glove=str(demo / "glove" / "glove.demo.300d.txt"),
                       pose_teacher="bench-pose", depth_teacher="bench-depth", panoptic_teacher="bench-panoptic",
                       text_teacher="bench-text", caption_teacher="bench-caption")
    n = args.images
    if args.memory:
        memory_run(args, base, work)
        return
    if args.teacher_bound:
        teacher_bound_run(args, base, work)
        return
    cores = spread_cores(sorted(os.sched_getaffinity(0)))
    os.sched_setaffinity(0, cores[:1])  # the bare loop and the in-process build get one core each
    bare_loop(files[:20], args.size)  # warm the page cache and the codecs
    rounds = []  # (bare s, build s, bare CPU s, build CPU s): interleaved, so each pair saw the same machine
    for r in range(args.rounds):
        cpu0 = time.process_time()  # CPU seconds too: less sensitive than wall time to other load
        bare = bare_loop(files, args.size)
        cpu1 = time.process_time()
        local_s, report = timed_build(BuildConfig(**{**base.__dict__, "out": str(work / f"local{r}"),
                                                     "executor": "local"}))
        rounds.append((bare, local_s, cpu1 - cpu0, time.process_time() - cpu1))
    ratio = statistics.median(b / a for a, b, _, _ in rounds)
    ratio_cpu = statistics.median(b / a for _, _, a, b in rounds)
    bare, local_s, bare_cpu, local_cpu = (statistics.median(col) for col in zip(*rounds))
    codecs, writes = store_floor(work / "local0", "train2017", work / "rewrite")
    os.sched_setaffinity(0, cores)
    floor = bare + codecs + writes
    rows = [("bare decode+resize", bare, n / bare), ("store codecs: encode only", codecs, n / codecs),
            ("store writer: tar+fsync", writes, n / writes), ("floor: bare+encode+write", floor, n / floor),
            ("build, in-process", local_s, n / local_s)]
    result: dict[str, Any] = {"images": n, "size": args.size, "shard_size": args.shard_size, "cores": len(cores),
                              "worker_cores": cores[:2],
                              "ray_daemons_on_worker_cores": args.pin_all,
                              "bare_ms_per_image": round(1000 * bare / n, 2),
                              "inprocess_ms_per_image": round(1000 * local_s / n, 2),
                              "rounds": args.rounds,
                              "inprocess_seconds_per_round": [round(b, 2) for _, b, _, _ in rounds],
                              "inprocess_over_bare": round(ratio, 2), "target_inprocess_over_bare": 3.0,
                              "inprocess_over_bare_per_round": [round(b / a, 2) for a, b, _, _ in rounds],
                              "bare_cpu_ms_per_image": round(1000 * bare_cpu / n, 2),
                              "inprocess_cpu_ms_per_image": round(1000 * local_cpu / n, 2),
                              "inprocess_over_bare_cpu": round(ratio_cpu, 2),
                              "codec_encode_ms_per_image": round(1000 * codecs / n, 2),
                              "store_write_ms_per_image": round(1000 * writes / n, 2),
                              "floor_over_bare": round(floor / bare, 2),
                              "inprocess_over_floor": round(local_s / floor, 2),
                              "stage_busy_s": {s: st["seconds"] for s, st in report["stages"].items()}}
    if not args.skip_ray:
        import ray

        from pipeline.ray_executor import RayExecutor

        ray_s: dict[int, list[float]] = {1: [], 2: []}
        # a local cluster announces its token authentication at every start; keep the table readable
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        for r in range(args.rounds):
            for workers in (1, 2):
                # A W-worker cluster's worker processes get W cores, so the teacher actors (which reserve no
                # CPU) cannot borrow a core the CPU tasks are not given. Ray starts on them; all but the raylet
                # and its workers then move off (unless --pin-all).
                work_cores = cores[:workers]
                os.sched_setaffinity(0, work_cores)
                ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
                if not args.pin_all and cores[workers:]:
                    _move_off_worker_cores(cores[workers:])
                # The cluster start is left out, up to the worker processes Ray starts with it: they boot in
                # the background after init returns; a task per worker waits for them and checks their cores.
                try:  # actor start-up is inside the timing
                    pinned = ray.get([ray.remote(_affinity).remote() for _ in range(workers)])
                    if any(p != sorted(work_cores) for p in pinned):
                        raise SystemExit(f"bench: Ray's workers run on cores {pinned}, not {work_cores}")
                    cfg = BuildConfig(**{**base.__dict__, "out": str(work / f"ray{workers}-{r}"), "executor": "ray"})
                    secs, ray_report = timed_build(cfg, RayExecutor(retries=1))
                    ray_s[workers].append(secs)
                    if r == 0:
                        result[f"ray{workers}_stage_busy_s"] = {s: st["seconds"]
                                                                for s, st in ray_report["stages"].items()}
                        result[f"ray{workers}_actor_startup_s"] = round(actor_startup(cfg), 2)
                finally:
                    ray.shutdown()
                    os.sched_setaffinity(0, cores)
        ray1, ray2 = statistics.median(ray_s[1]), statistics.median(ray_s[2])
        rows += [("build, Ray 1 worker", ray1, n / ray1), ("build, Ray 2 workers", ray2, n / ray2)]
        result.update({
            "ray1_ms_per_image": round(1000 * ray1 / n, 2), "ray2_ms_per_image": round(1000 * ray2 / n, 2),
            "ray1_over_inprocess": round(ray1 / local_s, 2), "target_ray1_over_inprocess": 1.25,
            "ray1_over_inprocess_without_actor_startup": round((ray1 - result["ray1_actor_startup_s"]) / local_s, 2),
            "ray1_seconds_per_round": [round(v, 2) for v in ray_s[1]],
            "ray2_seconds_per_round": [round(v, 2) for v in ray_s[2]],
            "ray2_speedup_over_ray1": round(statistics.median(a / b for a, b in zip(ray_s[1], ray_s[2])), 2),
            "target_ray2_speedup": 1.6,
        })
    print(f"{'run':<30}{'seconds':>10}{'images/s':>10}{'ms/image':>10}{'x bare':>8}")
    for name, secs, rate in rows:
        print(f"{name:<30}{secs:>10.2f}{rate:>10.1f}{1000 * secs / n:>10.2f}{secs / bare:>8.2f}")
    for workers in (1, 2):
        if f"ray{workers}_actor_startup_s" in result:
            print(f"{f'Ray {workers}: teacher actor start-up':<30}{result[f'ray{workers}_actor_startup_s']:>10.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
