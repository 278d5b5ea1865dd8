"""``build_targets(config)``: plan the (stage, shard) units of a split, run the unfinished ones, activate
complete columns in the manifest, and write rejected.jsonl and build-report.json (DESIGN 3 and 4)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from shards.atomic import Held, atomic_write_json, held
from shards.layout import column_dir
from shards.manifest import Manifest
from shards.schema import BUILD_LOCK_NAME, BUILD_REPORT_NAME, VOCAB_NAME
from shards.writer import ColumnWriter

from pipeline.commit import commit_split
from pipeline.config import BuildConfig
from pipeline.executors import Executor, make_executor, quiet_model_loading
from pipeline.plan import BuildError, Plan, check_gensim_model, prepare
from pipeline.progress import NOT_RUN, Progress
from pipeline.sources import write_id_map
from pipeline.stages import stage as get_stage
from pipeline.teacher_record import record_fingerprints
from pipeline.units import (UnitResult, decode_unit, derived_unit, load_vocabulary, teacher_predict, vocab_unit,
                            write_unit)

__all__ = ["BuildConfig", "BuildError", "build_targets"]

log = logging.getLogger(__name__)


@dataclass
class StageStats:
    """Counters of one stage in one run (a row of the summary table and of build-report.json)."""

    fingerprint: str
    units: int = 0
    run: int = 0
    skipped: int = 0
    failed: int = 0
    images: int = 0
    seconds: float = 0.0
    rejected: int = 0
    active: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["images_per_s"] = round(self.images / self.seconds, 2) if self.seconds > 0 else None
        d["seconds"] = round(self.seconds, 3)
        return d


def build_targets(config: BuildConfig, executor: Executor | None = None) -> dict[str, Any]:
    """Build (or finish) every requested column of a split; safe to re-run and to kill at any time.

    Args:
        config: the build settings.
        executor: run units here instead of the executor ``config.executor`` names (tests, benchmarks).

    Returns:
        The build report (also written to ``<out>/<split>/build-report.json``); ``report["ok"]`` is False when
        some unit failed for good.

    Raises:
        BuildError: bad input found before any work (missing COCO root, unknown split or teacher, a checkpoint
            that does not load, no vocabulary for a non-train split); one line.
    """
    quiet = not (config.progress and sys.stderr.isatty())  # weight-loading bars only on a terminal
    if quiet:
        quiet_model_loading()
    try:  # nothing starts here: a Ray cluster starts when prepare loads the teachers, after the cheap checks
        ex = executor or make_executor(config.executor, address=config.ray_address, num_cpus=config.num_cpus,
                                       gpus_per_teacher=config.gpus_per_teacher,
                                       cpus_per_teacher=config.cpus_per_teacher,
                                       actors_per_teacher=config.actors_per_teacher,
                                       shared_actors=config.shared_teacher_actors, retries=config.retries,
                                       quiet=quiet)
    except ValueError as e:  # an unknown executor name
        raise BuildError(str(e)) from None
    t0 = time.perf_counter()
    with contextlib.ExitStack() as lock:  # released after the executor closed: no unit of this build still runs
        try:  # the teachers load once, where they run (on Ray: in the actors, which also give the fingerprints)
            return _build(config, ex, t0, hold=lambda split_path: lock.enter_context(_one_build_of(split_path)))
        finally:
            ex.close()


@contextlib.contextmanager
def _one_build_of(split_path: Path) -> Iterator[None]:
    """Hold the split's build lock (``build.lock`` in its folder) until the build ends: a second build of the same
    split of the same store, from this machine or another sharing the store, is refused at once, naming the
    first, instead of racing it. Taken after the cheap checks, before the cluster starts and the teachers load."""
    path = split_path / BUILD_LOCK_NAME
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ray_job": _ray_job_id()}
    created = [p for p in (split_path, *split_path.parents) if not p.exists()]  # deepest first
    lock = held(path, holder)
    try:
        lock.__enter__()
    except OSError as e:  # cannot create or open it: one line
        raise BuildError(f"cannot take the build lock {path}: {e.strerror or e}") from None
    except Held as e:
        h = e.holder
        who = f"pid {h.get('pid')} on {h.get('host')} since {h.get('started')}" if h else "another process"
        job = f" (Ray job {h['ray_job']}: `ray job stop {h['ray_job']}` stops it)" if h.get("ray_job") else ""
        raise BuildError(f"split {split_path.name} of {split_path.parent} is being built by {who}{job}; one build "
                         "of a split runs at a time: wait for it, or stop it (a stopped build resumes where it "
                         "stopped)") from None
    try:
        yield
    finally:
        try:  # a build refused before its first write (a teacher that does not load) leaves nothing behind
            if created and split_path.is_dir() and all(f.name == BUILD_LOCK_NAME for f in split_path.iterdir()):
                path.unlink()
                with contextlib.suppress(OSError):  # a folder another build has just written into stays
                    for folder in created:
                        folder.rmdir()
        finally:
            lock.__exit__(None, None, None)


def _ray_job_id() -> str | None:
    """The Ray job submission id of this process when a Ray job runs it (``ray job submit``), else None."""
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata") or {}
        return str(meta["job_submission_id"])[:100] if "job_submission_id" in meta else None
    except (ValueError, AttributeError):
        return None


def _build(config: BuildConfig, ex: Executor, t0: float, hold: Callable[[Path], Any]) -> dict[str, Any]:
    plan = prepare(config, ex, hold=hold)
    if "tokens" in plan.run_stages and plan.vocab_path is None and plan.pending["tokens"]:
        check_gensim_model(plan.config.glove)  # the vocabulary is built at the end: know now it can be
    record_fingerprints(plan.split_path, plan.teacher_settings, plan.teacher_fps)  # for `pipeline status`
    plan.split_path.mkdir(parents=True, exist_ok=True)  # what was asked, should the build never finish
    atomic_write_json(plan.split_path / BUILD_REPORT_NAME, {
        "ok": None, "finished": None, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": plan.config.to_json(), "note": "started, not finished (yet): its shards done so far are kept"})
    return _Run(plan, ex).run(setup_seconds=time.perf_counter() - t0)


class _Ledger:
    """What one build did, stage by stage: units done, run, failed, their images and seconds, the failures and the
    images a teacher refused; the progress bars move with it."""

    def __init__(self, plan: Plan, progress: Progress | None = None) -> None:
        self.stats = {s: StageStats(plan.fps[s], units=len(plan.shards)) for s in plan.run_stages}
        self.done = {s: set(plan.shards) - plan.pending[s] for s in plan.run_stages}
        for s in plan.run_stages:
            self.stats[s].skipped = len(self.done[s])
        self.failures: list[dict[str, Any]] = []
        self.emptied: list[dict[str, Any]] = []  # images a teacher refused, written with an empty target
        self.estimated: dict[str, set[str]] = {}  # stage -> shards whose image count includes rejected ids
        self.progress = progress

    def is_done(self, s: str, shard: str) -> bool:
        """Whether ``shard`` of stage ``s`` is written, or ``s`` is not a stage of this build."""
        return s not in self.done or shard in self.done[s]

    def record(self, result: UnitResult) -> None:
        st = self.stats[result.stage]
        self.done[result.stage].add(result.shard)
        st.run += 1
        st.images += result.images
        st.seconds += result.seconds
        st.rejected += len(result.rejected)
        self.emptied += result.emptied
        if self.progress is not None:
            self.progress.update(result.stage, result.images + len(result.rejected))
            for other, shards in self.estimated.items():  # their bars counted this shard's rejected images too
                if result.rejected and result.shard in shards:
                    self.progress.shrink(other, len(result.rejected))

    def fail(self, s: str, shard: str, error: str, counted: bool = True) -> None:
        """A unit that failed for good (``counted``: one of the stage's units, not the vocabulary)."""
        self.failures.append({"stage": s, "shard": shard or None, "error": error})
        if counted:
            self.stats[s].failed += 1


class _Run:
    """The scheduler of one build: submits ready units, bounded, and hands what finishes to the ledger."""

    def __init__(self, plan: Plan, ex: Executor) -> None:
        self.plan, self.ex = plan, ex
        self.cfg = plan.config
        self.split_path = str(plan.split_path)
        self.ledger = _Ledger(plan)
        self.inflight: dict[Any, tuple[str, str, str]] = {}  # handle -> (kind, stage, shard)
        self.decoded: dict[str, Any] = {}  # shard -> handle of its Decoded
        self.teacher_left: dict[str, int] = {}  # shard -> teacher units still running on it
        self.vocab_path: str | None = plan.vocab_path
        self.vocab_handle: Any = None  # the loaded vocabulary, shared by every tokens unit
        self.vocab_started = False
        self.chained: dict[Any, list[str]] = {}  # teacher write handle -> derived stages it also writes

    # ---- readiness -------------------------------------------------------------------------------
    def _derived_ready(self) -> list[tuple[str, str]]:
        ready = []
        for s in self.plan.run_stages:
            st = get_stage(s)
            if st.kind != "derived":
                continue
            if s == "tokens" and self.vocab_path is None:
                continue
            for shard in sorted(self.plan.pending[s]):
                if all(self.ledger.is_done(i, shard) for i in st.inputs):
                    ready.append((s, shard))
        return ready

    # ---- submission ------------------------------------------------------------------------------
    def _submit_shard(self, shard: str) -> None:
        p = self.plan
        teachers = [s for s in p.run_stages if get_stage(s).kind == "teacher" and shard in p.pending[s]]
        write_base = "base" in p.run_stages and shard in p.pending["base"]
        stats, data = self.ex.submit(decode_unit, shard, p.records[shard], self.cfg.size, self.split_path,
                                     p.fps["base"], p.specs["base"], write_base, bool(teachers), num_returns=2)
        self.inflight[stats] = ("base" if write_base else "decode", "base", shard)
        if write_base:
            p.pending["base"].discard(shard)
        if teachers:
            self.decoded[shard] = data
            self.teacher_left[shard] = len(teachers)
        for s in teachers:
            p.pending[s].discard(shard)
            predicted = self.ex.submit_teacher(s, teacher_predict, s, data)
            chained = self._chain(s, shard)
            h = self.ex.submit(write_unit, s, self.split_path, p.fps[s], p.specs[s], shard, predicted,
                               [(d, p.fps[d], p.specs[d]) for d in chained])
            self.inflight[h] = ("teacher", s, shard)
            self.chained[h] = chained

    def _chain(self, s: str, shard: str) -> list[str]:
        """Derived stages whose only input is teacher stage ``s`` and whose unit on ``shard`` is pending: the
        teacher's write unit writes them from memory (claimed here; handed back if that unit fails)."""
        p = self.plan
        chained = [d for d in p.run_stages if get_stage(d).kind == "derived" and get_stage(d).inputs == (s,)
                   and d != "tokens" and shard in p.pending[d]]
        for d in chained:
            p.pending[d].discard(shard)
        return chained

    def _submit_derived(self, s: str, shard: str) -> None:
        p = self.plan
        parent = get_stage(s).inputs[0]
        vocab = None
        if s == "tokens":
            if self.vocab_handle is None:
                self.vocab_handle = self.ex.submit(load_vocabulary, self.vocab_path)
            vocab = self.vocab_handle
        h = self.ex.submit(derived_unit, s, self.split_path, p.fps[s], p.specs[s], shard, parent, p.fps[parent],
                           p.fps["base"], vocab)
        p.pending[s].discard(shard)
        self.inflight[h] = ("derived", s, shard)

    def _maybe_submit_vocab(self) -> None:
        p = self.plan
        if self.vocab_started or self.vocab_path is not None or "tokens" not in p.run_stages:
            return
        if not p.pending["tokens"]:
            return
        if not all(self.ledger.is_done("caption", shard) for shard in p.shards):
            return
        self.vocab_started = True
        out = str(column_dir(p.split_path, "tokens", p.fps["tokens"]) / VOCAB_NAME)
        h = self.ex.submit(vocab_unit, self.split_path, p.fps["caption"], list(p.shards), self.cfg.glove,
                           self.cfg.vocab_size, out)
        self.inflight[h] = ("vocab", "tokens", "")

    # ---- results ---------------------------------------------------------------------------------
    def _finish(self, handle: Any) -> None:
        kind, s, shard = self.inflight.pop(handle)
        if kind == "teacher":
            self.teacher_left[shard] -= 1
            if self.teacher_left[shard] == 0:
                del self.teacher_left[shard], self.decoded[shard]
        chained = self.chained.pop(handle, [])
        try:
            result = self.ex.result(handle)
        except Exception as e:  # recorded; the rest of the build goes on
            for d in chained:  # not run: reported with the other units whose input failed
                self.plan.pending[d].add(shard)
            if kind != "decode":  # pixels for teachers only: their own units fail and are recorded
                self.ledger.fail(s, shard, f"{type(e).__name__}: {e}", counted=kind != "vocab")
            return
        if kind == "vocab":
            self.vocab_path, seconds = result
            self.ledger.stats["tokens"].seconds += seconds  # the vocabulary is part of the tokens stage's work
        elif kind == "teacher":
            for r in result:
                self.ledger.record(r)
            written = {r.stage for r in result}
            for d in chained:  # a chained stage that failed runs again as a derived unit reading the store
                if d not in written:
                    self.plan.pending[d].add(shard)
        elif kind != "decode":
            self.ledger.record(result)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, setup_seconds: float = 0.0) -> dict[str, Any]:
        """Run every pending unit; ``setup_seconds`` (planning and loading the teachers) count in the wall time."""
        p, t0 = self.plan, time.perf_counter() - setup_seconds
        started = (datetime.now(timezone.utc) - timedelta(seconds=setup_seconds)).isoformat(timespec="seconds")
        shard_queue = [sh for sh in p.shards if any(
            sh in p.pending[s] for s in p.run_stages if get_stage(s).kind in ("base", "teacher"))]
        limit = self._inflight_limit()
        known = ColumnWriter(p.split_path, "base", p.fps["base"]).records()  # sample counts of finished base shards
        self.ledger.estimated = {s: {sh for sh in p.pending[s] if sh not in known} for s in p.run_stages
                                 if s != "base"}
        totals = {s: (len(p.pending[s]), sum(known[sh].count if sh in known and s != "base" else len(p.records[sh])
                                             for sh in p.pending[s])) for s in p.run_stages}
        placement, cluster = self.ex.placement(), self.ex.cluster()
        header = "teachers: " + "; ".join(f"{s} {where}" for s, where in placement.items()) if placement else None
        with Progress(totals, enabled=self.cfg.progress, header=header) as self.ledger.progress:
            while True:
                while shard_queue and self._live_shards() < limit:
                    self._submit_shard(shard_queue.pop(0))
                derived_slots = 2 * limit - sum(1 for k, _, _ in self.inflight.values() if k == "derived")
                for s, shard in self._derived_ready()[:max(0, derived_slots)]:
                    self._submit_derived(s, shard)
                self._maybe_submit_vocab()
                if not self.inflight:
                    break
                for handle in self.ex.wait(list(self.inflight), timeout=0.5):
                    self._finish(handle)
        for s in p.run_stages:  # units never submitted because an input failed
            for shard in sorted(p.pending[s]):
                self.ledger.fail(s, shard, NOT_RUN, counted=False)
        manifest = None
        if all(self.ledger.is_done("base", sh) for sh in p.shards):
            manifest = commit_split(p, self.ledger.done, self.vocab_path)
            if p.id_map is not None and not self.ledger.failures:  # every column holds the folder's shards as
                write_id_map(p.split_path, p.id_map)  # they are now: their digests are the map's from here on
        report = _report(p, self.ledger, manifest, self.ex.name, placement, cluster, started=started,
                         wall=time.perf_counter() - t0, setup=setup_seconds)
        p.split_path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(p.split_path / BUILD_REPORT_NAME, report)
        return report

    def _inflight_limit(self) -> int:
        """``max_inflight_shards``, lowered where that many decoded shards would not fit the executor's memory
        budget (Ray's object store: past it, objects spill to disk and the build slows to the disk's pace)."""
        limit = max(1, self.cfg.max_inflight_shards)
        budget = self.ex.memory_budget()
        if not budget:
            return limit
        # full-resolution RGB of the largest shard, plus a quarter for the teachers' outputs in store geometry
        per_shard = 1.25 * max(sum(3 * r.width * r.height for r in recs) for recs in self.plan.records.values())
        fit = max(1, int(0.8 * budget // max(per_shard, 1.0)))
        if fit < limit:
            log.warning("%d decoded shards of up to %.1f GB do not fit the %.1f GB object store; keeping %d in "
                        "flight (smaller --shard-size or a bigger object store allow more)",
                        limit, per_shard / 1e9, budget / 1e9, fit)
        return min(limit, fit)

    def _live_shards(self) -> int:
        decoding = {sh for k, _, sh in self.inflight.values() if k == "decode"}
        return len(decoding | set(self.decoded))


def _report(plan: Plan, ledger: _Ledger, manifest: Manifest | None, executor: str, placement: Mapping[str, str],
            cluster: Mapping[str, Any] | None, started: str, wall: float, setup: float) -> dict[str, Any]:
    """The build report (build-report.json): what was asked, what ran, what failed, what is active."""
    columns = manifest.columns if manifest else {}
    for s, st in ledger.stats.items():
        st.active = columns.get(s)
    return {
        "split": plan.config.split, "started": started, "wall_seconds": round(wall, 3),
        "setup_seconds": round(setup, 3), "executor": executor, "cluster": dict(cluster) if cluster else None,
        "ok": not ledger.failures, "samples": manifest.num_samples if manifest else None,
        "rejected": manifest.rejected if manifest else None,
        "image_ids": sum(len(r) for r in plan.records.values()),
        "stages": {s: st.to_json() for s, st in ledger.stats.items()}, "teachers": dict(placement),
        "failures": ledger.failures, "config": plan.config.to_json(),
        "dropped_annotations": plan.dropped_annotations,  # malformed person annotations left out when reading COCO
        "added_files": plan.added_files, "removed_files": plan.removed_files,  # a folder source's changes
        "source_notes": plan.source_notes,  # what it left out
        "requested_columns": list(plan.run_stages),  # what this build set out to make active (shards verify)
        "emptied_targets": sorted(ledger.emptied, key=lambda e: (e["stage"], e["id"])),  # a teacher refused them
        "replaced": {s: {"from": plan.active[s], "to": fp} for s, fp in columns.items()  # `pipeline diff` them
                     if plan.active.get(s) not in (None, fp)},
    }
