"""Where units run: in-process (``local``) or on a Ray cluster (``ray``), behind one small interface.

The build submits plain functions from ``pipeline.units``; a teacher unit gets the teacher instance its
executor holds (loaded once per process or actor) as first argument. Handles returned by ``submit`` may be
passed as arguments of later submissions (Ray resolves them where the unit runs).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import signal
import sys
import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherFactory:
    """How to build a teacher inside a worker: its class and constructor keywords."""

    cls: type
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        kwargs = dict(self.kwargs)
        if kwargs.get("device") == "auto":  # a teacher that never uses a GPU (ground truth) says "cpu"
            kwargs["device"] = resolve_device("auto") if self.cls.can_use_gpu() else "cpu"
        return self.cls(**kwargs)

    def wants_gpu(self) -> bool:
        """Whether the teacher would use a GPU given one: it can run on one here and its device is not "cpu"."""
        return self.cls.can_use_gpu() and str(self.kwargs.get("device", "auto")) != "cpu"

    def without_gpu(self) -> "TeacherFactory":
        """This factory for an actor that reserves no GPU: device "auto" becomes "cpu" for a model teacher (Ray
        hides no GPU from such an actor, so "auto" would take one that is not reserved for it)."""
        if self.kwargs.get("device") == "auto" and self.wants_gpu():
            return TeacherFactory(self.cls, {**self.kwargs, "device": "cpu"})
        return self


class ClusterResourceError(RuntimeError):
    """The teacher actors' GPU shares do not all fit the cluster's GPUs at once: Ray would wait forever."""


class ClusterConnectionError(RuntimeError):
    """The driver could not join the Ray cluster it was pointed at."""


#: Ray counts fractional GPUs in steps of 1/10000.
_GPU_STEP = 10_000


def check_gpu_share(gpus: float) -> None:
    """Raise ValueError unless ``gpus`` is a GPU share Ray accepts: a fraction up to 1 or a whole number."""
    if not gpus >= 0 or (gpus > 1 and gpus != int(gpus)):  # ``not >=`` also catches NaN
        raise ValueError(f"--gpus-per-teacher {gpus:g}: use a fraction up to 1 or a whole number of GPUs")


def whole_gpus(node_gpus: Sequence[float]) -> int:
    """The whole GPUs of the nodes together (a node's fractional GPU count holds no full share)."""
    return sum(math.floor(g + 1e-9) for g in node_gpus)


def check_cpu_share(actors: int, node_cpus: Sequence[float], cpus: float) -> None:
    """Raise ClusterResourceError unless ``actors`` teacher actors of ``cpus`` CPUs each fit the nodes and leave
    at least one CPU for the CPU tasks (else Ray waits forever: for the actors, or for a CPU to decode on)."""
    cluster = f"{'+'.join(f'{c:g}' for c in node_cpus) or '0'} CPUs on {len(node_cpus)} node(s)"
    if sum(node_cpus) < 1:
        raise ClusterResourceError(f"the Ray cluster has no CPU for decoding ({cluster}); give its nodes CPUs")
    if cpus <= 0 or actors == 0:
        return
    free = sorted(node_cpus, reverse=True)  # place the actors as Ray may: each on a node with room, largest first
    placed = 0
    for _ in range(actors):
        i = next((i for i, c in enumerate(free) if c + 1e-9 >= cpus), None)
        if i is None:
            break
        free[i] -= cpus
        placed += 1
    if placed < actors or max(free) < 1:  # every actor placed, and one whole CPU left on some node for a task
        raise ClusterResourceError(
            f"{actors} teacher actor(s) x {cpus:g} CPU (--cpus-per-teacher) do not fit the Ray cluster's {cluster} "
            f"with a CPU left for decoding: {placed} fit; lower --cpus-per-teacher (0 reserves none)")


def gpus_per_actor(actors: int, node_gpus: Sequence[float], requested: float | None) -> float:
    """GPUs each of ``actors`` GPU teacher actors reserves.

    Ray places a fractional share inside one GPU and a whole number of GPUs inside one node, so what fits is
    counted per GPU and per node, not from the cluster's total (three actors of 0.6 GPU do not fit two GPUs).

    Args:
        actors: the teacher actors that would use a GPU (pools x actors per pool).
        node_gpus: the GPUs of each node of the cluster.
        requested: ``--gpus-per-teacher``; ``None`` shares the GPUs evenly: 1/k of a GPU each for the smallest
            k that places every actor (at most one GPU each; one GPU and three actors: a third each), or 0 on
            a cluster without GPUs.

    Raises:
        ValueError: see ``check_gpu_share``.
        ClusterResourceError: the actors cannot all be placed at once (Ray would wait for them forever).
    """
    if requested is not None:
        check_gpu_share(requested)
    whole = whole_gpus(node_gpus)
    if actors == 0 or (requested is None and whole == 0):
        return 0.0
    even = math.floor(_GPU_STEP / math.ceil(actors / whole)) / _GPU_STEP if whole else 0.0
    if requested is None:
        return even
    if requested == 0:
        return 0.0
    if requested >= 1:
        fits = sum(math.floor(g / requested + 1e-9) for g in node_gpus)
    else:
        fits = whole * math.floor(1 / requested + 1e-9)
    if fits < actors:
        hint = f"--gpus-per-teacher {even:g} or fewer --actors-per-teacher" if even else "--gpus-per-teacher 0"
        raise ClusterResourceError(
            f"{actors} GPU teacher actor(s) x {requested:g} GPU do not fit the Ray cluster's GPUs "
            f"({'+'.join(f'{g:g}' for g in node_gpus) or '0'} on {len(node_gpus)} node(s)): {fits} fit at once; "
            f"use {hint} (or leave --gpus-per-teacher out to share the GPUs)")
    return float(requested)


def quiet_model_loading() -> None:
    """Turn off the progress bars model libraries draw while loading weights, in this process (and in the
    processes it starts from now on): what ``--no-progress`` promises."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by transformers when it is imported
    if "transformers" in sys.modules:  # already imported: its switch was read then
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when this process sees a GPU, else ``"cpu"``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Executor(ABC):
    """Runs units; the build only ever calls these methods."""

    name: str

    @abstractmethod
    def start(self, teachers: Mapping[str, TeacherFactory]) -> dict[str, Any]:
        """Load the teachers of the given stages where their units will run (once per process or actor).

        Returns:
            stage -> the teacher's fingerprint, or the exception its construction raised.
        """

    @abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        """Run ``fn(*args)`` as a CPU unit; returns a handle (a list of ``num_returns`` handles if > 1)."""

    @abstractmethod
    def submit_teacher(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(teacher_of_stage, *args)`` where the stage's teacher lives; returns a handle."""

    @abstractmethod
    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        """Handles among ``handles`` that are finished (at least one unless ``timeout`` passes)."""

    @abstractmethod
    def result(self, handle: Any) -> Any:
        """The value of a finished handle; raises the unit's exception if it failed for good."""

    def memory_budget(self) -> int | None:
        """Bytes that the decoded shards in flight may occupy where they are held (None: no set limit)."""
        return None

    def on_every_node(self, fn: Callable[..., Any], *args: Any) -> list[Any] | None:
        """``fn(*args, index)`` once on each node of the cluster, as a list of results (an exception where a node
        failed to answer); None for an executor that runs in this process only."""
        return None

    def cluster(self) -> dict[str, Any] | None:
        """The cluster the units run on (address, nodes, CPUs, GPUs), for the build's output and report; None for
        an executor that runs in this process only."""
        return None

    def placement(self) -> dict[str, str]:
        """Where the started teachers run, in words, keyed by stage ("+"-joined stages for teachers that share
        their actors), for the build's output and report."""
        return {}

    def close(self) -> None:
        """Release workers and teachers."""


class _Unit:
    """A unit submitted to the local executor: run when a ``wait`` or ``result`` needs it, in submission order
    (so a unit's inputs, submitted before it, have run by then)."""

    __slots__ = ("fn", "args", "returns", "value", "error", "ran")

    def __init__(self, fn: Callable[..., Any], args: Sequence[Any], returns: int = 1) -> None:
        self.fn, self.args, self.returns = fn, args, returns
        self.value: Any = None
        self.error: BaseException | None = None
        self.ran = False


class _Done:
    """A handle of the local executor: a unit's value, or item ``index`` of it (``num_returns`` > 1)."""

    __slots__ = ("unit", "index")

    def __init__(self, unit: _Unit, index: int | None = None) -> None:
        self.unit, self.index = unit, index

    @property
    def error(self) -> BaseException | None:
        return self.unit.error

    @property
    def value(self) -> Any:
        return self.unit.value if self.index is None else self.unit.value[self.index]


class LocalExecutor(Executor):
    """Runs every unit in this process (same unit code as Ray), one at a time in submission order, when the
    build waits for it (so its progress moves unit by unit); retries a failing unit.

    Args:
        retries: extra attempts of a unit that raised.
    """

    name = "local"

    def __init__(self, retries: int = 3) -> None:
        self.retries = retries
        self.teachers: dict[str, Any] = {}
        self._queue: deque[_Unit] = deque()

    def start(self, teachers: Mapping[str, TeacherFactory]) -> dict[str, Any]:
        return {stage: _build_into(self.teachers, stage, factory) for stage, factory in teachers.items()}

    def _run(self, unit: _Unit) -> None:
        unit.ran = True
        try:
            self._attempt(unit)
        finally:
            unit.fn, unit.args = None, ()  # a finished unit holds no inputs (decoded pixels) alive

    def _attempt(self, unit: _Unit) -> None:
        for arg in unit.args:
            if isinstance(arg, _Done) and arg.error is not None:
                unit.error = arg.error
                return
        args = [a.value if isinstance(a, _Done) else a for a in unit.args]
        name = getattr(unit.fn, "__name__", unit.fn)
        for attempt in range(self.retries + 1):
            try:
                value = unit.fn(*args)
                if unit.returns > 1 and len(value) != unit.returns:
                    raise ValueError(f"unit {name} returned {len(value)} values, not {unit.returns}")
                unit.value = value
                return
            except Exception as e:  # a failed unit is reported, not fatal to the build
                if attempt == self.retries or not worth_retrying(e):
                    unit.error = e
                    return
                log.warning("unit %s failed (%s), retrying", name, e)

    def _enqueue(self, fn: Callable[..., Any], args: Sequence[Any], returns: int = 1) -> _Unit:
        unit = _Unit(fn, args, returns)
        self._queue.append(unit)
        return unit

    def submit(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        unit = self._enqueue(fn, args, num_returns)
        return _Done(unit) if num_returns == 1 else [_Done(unit, i) for i in range(num_returns)]

    def submit_teacher(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        return _Done(self._enqueue(fn, (self.teachers[stage], *args)))

    def placement(self) -> dict[str, str]:
        return {stage: f"in-process on {teacher.device}" for stage, teacher in self.teachers.items()}

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        while self._queue and not any(h.unit.ran for h in handles):
            self._run(self._queue.popleft())
        return [h for h in handles if h.unit.ran]

    def result(self, handle: Any) -> Any:
        while not handle.unit.ran:
            self._run(self._queue.popleft())
        if handle.error is not None:
            raise handle.error
        return handle.value

    def close(self) -> None:
        self.teachers.clear()
        self._queue.clear()


class RayExecutor(Executor):
    """Teachers in Ray actor pools (model loaded once per actor), every other unit a Ray CPU task.

    Args:
        address: cluster to join (``ray://...``, ``host:port`` or ``auto``); ``None`` uses ``RAY_ADDRESS`` or
            starts a local cluster.
        num_cpus: CPUs of a local cluster started here (``None`` = all).
        gpus_per_teacher: GPUs per actor of a teacher that uses one, fractional allowed; ``None`` shares the
            cluster's GPUs evenly among those actors (at most 1 each; 0 on a CPU-only cluster). Asking for
            more than fits the cluster's GPUs raises ``ClusterResourceError`` instead of waiting forever.
        cpus_per_teacher: CPUs reserved per teacher actor (0 keeps actors from starving CPU tasks).
        actors_per_teacher: actors in each teacher's pool.
        shared_actors: host every teacher in each actor of one pool instead of a pool per teacher; ``None``
            = a pool per teacher that takes a GPU and one shared pool for the others. Each actor process costs
            about a second of CPU to start, and CPU teachers in separate processes only compete for the same
            cores (each model call already uses all of them), so on CPU one process for all of them is the
            cheaper layout.
        retries: retries of a failed task; restarts of a dead actor and retries of its calls.
        quiet: no model-loading progress bars in the teacher actors.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 gpus_per_teacher: float | None = None, cpus_per_teacher: float = 0.0,
                 actors_per_teacher: int = 1, shared_actors: bool | None = None, retries: int = 3,
                 quiet: bool = False) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.gpus_per_teacher = gpus_per_teacher
        self.cpus_per_teacher = cpus_per_teacher
        self.actors_per_teacher = actors_per_teacher
        self.shared_actors = shared_actors
        self.retries = retries
        self.quiet = quiet
        self.pools: dict[str, list[Any]] = {}
        self.load: dict[Any, int] = {}  # actor -> calls in flight
        self.owner: dict[Any, Any] = {}  # teacher call handle -> actor
        self._remote: dict[Callable[..., Any], Any] = {}
        self._placement: dict[str, str] = {}
        self._started_here = False

    def _connect(self) -> None:
        """Join the cluster at ``address`` or start a local one (once).

        Raises:
            ClusterConnectionError: Ray could not join the cluster (one line; token authentication named).
        """
        import ray

        if ray.is_initialized():
            return
        if not (sys.stdout.isatty() and sys.stderr.isatty()):  # the workers' log lines, copied here, go to a
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # file or a pipe: no colour codes in them
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if self.address:
            kwargs["address"] = self.address
        else:
            if self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            # A local cluster turns on token authentication by default and says so on stderr at every
            # start; it stays on, only the notice is kept out of the build's output.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        handler = signal.getsignal(signal.SIGTERM)  # the command's own (stop cleanly), which Ray's driver replaces
        before = set(descendants(os.getpid())) if not self.address else set()
        try:
            ray.init(**kwargs)
            if callable(handler) and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, handler)
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:  # ConnectionError is an OSError: it
            # would pass for a disk error; AuthenticationError: token mode without the head's token
            hint = ""
            if os.path.isfile(os.path.expanduser("~/.ray/auth_token")) and not os.environ.get("RAY_AUTH_MODE"):
                hint = ("; a head started with `ray start` on a machine holding ~/.ray/auth_token uses token "
                        "authentication: set RAY_AUTH_MODE=token (and the same token) for the driver")
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise ClusterConnectionError(f"cannot join the Ray cluster at {self.address}: {first[:200]}{hint}") \
                from None
        self._started_here = True
        if not self.address:  # a cluster started here: its processes end with this one, even after a kill -9
            fate_share([p for p in descendants(os.getpid()) if p not in before])

    def on_every_node(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._connect()
        remote = ray.remote(fn)
        refs = [remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    n["NodeID"], soft=False)).remote(*args, i)
                for i, n in enumerate(n for n in ray.nodes() if n.get("Alive"))]
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=180)  # all nodes at once, not one by one
        for ref in late:
            ray.cancel(ref, force=True)
        out: list[Any] = []
        for ref in refs:
            try:
                out.append(ray.get(ref) if ref in ready else TimeoutError("no answer in 180 s"))
            except Exception as e:  # noqa: BLE001 - a node that cannot run a task is reported, not raised
                out.append(e)
        return out

    def cluster(self) -> dict[str, Any]:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        return {"address": ray.get_runtime_context().gcs_address, "nodes": len(nodes),
                "cpus": sum(r.get("CPU", 0.0) for r in nodes), "gpus": sum(r.get("GPU", 0.0) for r in nodes)}

    def start(self, teachers: Mapping[str, TeacherFactory]) -> dict[str, Any]:
        import ray

        self._connect()
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        node_gpus = [r.get("GPU", 0.0) for r in nodes]
        groups = self._actor_groups(teachers, node_gpus)
        check_cpu_share(len(groups) * self.actors_per_teacher, [r.get("CPU", 0.0) for r in nodes],
                        self.cpus_per_teacher)
        self.pools = {}
        for stages, gpus in groups:
            worker = ray.remote(_TeacherWorker).options(
                num_gpus=gpus, num_cpus=self.cpus_per_teacher,
                max_restarts=self.retries, max_task_retries=self.retries)
            hosted = {s: teachers[s] if gpus else teachers[s].without_gpu() for s in stages}
            pool = [worker.remote(hosted, self.quiet) for _ in range(self.actors_per_teacher)]
            self.pools.update({s: pool for s in stages})
            n = self.actors_per_teacher
            where = f"{n} actor{'s' * (n > 1)} x {gpus:g} GPU" if gpus else f"{n} CPU actor{'s' * (n > 1)}"
            self._placement["+".join(stages)] = where
        for pool in self.pools.values():
            for actor in pool:
                self.load[actor] = 0
        out: dict[str, Any] = {}
        for stage in teachers:  # every actor of a pool loads the same teacher: its first one answers
            try:
                out[stage] = ray.get(self.pools[stage][0].fingerprint.remote(stage))
            except ray.exceptions.RayActorError as e:  # the process died while loading (out of memory, ...)
                out[stage] = RuntimeError(f"its actor died while loading it: {e.error_msg.splitlines()[0]}")
        return out

    def _actor_groups(self, teachers: Mapping[str, TeacherFactory], node_gpus: Sequence[float]
                      ) -> list[tuple[list[str], float]]:
        """The actor pools to start: (stages hosted together, GPUs per actor) each.

        A teacher that would use a GPU gets a pool of its own (unless ``shared_actors`` says otherwise) with the
        GPU share of ``gpus_per_actor``; the teachers that take no GPU (ground truth, ``--device cpu``, a
        cluster without GPUs, ``--gpus-per-teacher 0``) share one pool of CPU actors.
        """
        gpu = [s for s, f in teachers.items() if f.wants_gpu()]
        if self.gpus_per_teacher == 0 or (self.gpus_per_teacher is None and whole_gpus(node_gpus) == 0):
            gpu = []
        cpu = [s for s in teachers if s not in gpu]
        shared = self.shared_actors if self.shared_actors is not None else not gpu
        if shared:
            groups = [list(teachers)] if teachers else []
        elif self.shared_actors is None:  # auto: a pool per GPU teacher, one for the rest
            groups = [[s] for s in gpu] + ([cpu] if cpu else [])
        else:
            groups = [[s] for s in teachers]
        with_gpu = [g for g in groups if any(s in gpu for s in g)]
        gpus = gpus_per_actor(len(with_gpu) * self.actors_per_teacher, node_gpus, self.gpus_per_teacher)
        return [(g, gpus if g in with_gpu else 0.0) for g in groups]

    def submit(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        import ray

        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn)
        remote = self._remote[fn].options(num_returns=num_returns, max_retries=self.retries,
                                          retry_exceptions=True)
        return remote.remote(*args)

    def submit_teacher(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        actor = min(self.pools[stage], key=lambda a: self.load[a])
        ref = actor.run.options(retry_exceptions=[_Transient]).remote(stage, fn, *args)
        self.load[actor] += 1
        self.owner[ref] = actor
        return ref

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        import ray

        if self.owner:  # teacher calls that finished free their actor for the next shard
            calls = list(self.owner)
            finished, _ = ray.wait(calls, num_returns=len(calls), timeout=0, fetch_local=False)
            for ref in finished:
                self.load[self.owner.pop(ref)] -= 1
        done, _ = ray.wait(list(handles), num_returns=1, timeout=timeout, fetch_local=False)
        if done:  # collect everything else that is already finished too
            more, _ = ray.wait(list(handles), num_returns=len(handles), timeout=0, fetch_local=False)
            done = more or done
        return done

    def placement(self) -> dict[str, str]:
        return dict(self._placement)

    def memory_budget(self) -> int | None:
        import ray

        store = ray.cluster_resources().get("object_store_memory")  # Ray's shared-memory object store
        return int(store) if store else None

    def result(self, handle: Any) -> Any:
        import ray

        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as e:  # the unit's own exception, without Ray's traceback and colours
            cause = e.cause.args[0] if isinstance(e.cause, _Transient) else e.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except ray.exceptions.RayError as e:  # an actor or worker died, an object was lost: on one line (the
            # cause, e.g. out of memory, is on a later line of Ray's message)
            text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or "no detail"
            raise RuntimeError(f"{type(e).__name__}: {text[:400]}") from None

    def close(self) -> None:
        import ray

        if not self._started_here:  # a cluster started here goes down whole below: killing its actors one by one
            for actor in self.load:  # first made Ray report each of their calls in flight as failed and retried
                ray.kill(actor)
        self.pools.clear()
        self.load.clear()
        self._placement.clear()
        if self._started_here:
            ray.shutdown()


def _build_into(teachers: dict[str, Any], stage: str, factory: TeacherFactory) -> Any:
    """Build a stage's teacher into ``teachers``; returns its fingerprint, or the exception construction raised
    (a bad checkpoint, an unknown parameter: the driver turns it into one line)."""
    try:
        teachers[stage] = factory.build()
    except Exception as e:
        return e
    return teachers[stage].fingerprint()


class _TeacherWorker:
    """The body of a teacher actor: builds its teachers (one or several stages') once, then runs teacher
    units with the one of the unit's stage. A teacher that fails to build is reported by ``fingerprint``
    instead of killing the actor (and with it the other teachers it hosts)."""

    def __init__(self, factories: Mapping[str, TeacherFactory], quiet: bool = False) -> None:
        if quiet:
            quiet_model_loading()
        self.teachers: dict[str, Any] = {}
        self.built = {stage: _build_into(self.teachers, stage, factory) for stage, factory in factories.items()}

    def fingerprint(self, stage: str) -> Any:
        result = self.built[stage]
        if isinstance(result, BaseException):  # it travels to the driver: make sure it can
            import pickle

            try:
                pickle.dumps(result)
            except Exception:
                return RuntimeError(f"{type(result).__name__}: {result}")
        return result

    def run(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        if stage not in self.teachers:
            raise RuntimeError(f"the {stage} teacher did not load: {self.built[stage]}")
        try:
            return fn(self.teachers[stage], *args)
        except Exception as e:  # Ray retries only a _Transient: a TeacherError would fail the same way again
            if not worth_retrying(e):
                raise
            raise _Transient(e) from None


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): with the pid, it names that process and no later one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every process below ``pid`` (Linux /proc; elsewhere none)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        start = _start_time(p)
        if start is not None:
            found.append((p, start))
        todo += children.get(p, [])
    return found


#: run by a process of its own: waits for the driver to end, then ends the processes it was given (the local Ray
#: cluster's GCS, raylet, monitors and agents), those whose start time shows they are still the same processes
_WATCHDOG = "import os, signal, sys, time, json\n" + inspect.getsource(_start_time) + r"""
driver, start, procs = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
while _start_time(driver) == start:
    time.sleep(1.0)
for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p, s in procs if _start_time(p) == s]
    for p in alive:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    if not alive:
        break
    time.sleep(2.0)
"""


def fate_share(procs: Sequence[tuple[int, str]]) -> None:
    """Have ``procs`` ended when this process ends, however it ends: Ray's own fate sharing leaves a local
    cluster's dashboard and runtime-env agents running, orphaned, after a driver is killed with SIGKILL. A small
    watchdog process of its own session waits for this one and ends them (Linux; elsewhere nothing)."""
    import json
    import subprocess

    start = _start_time(os.getpid())
    if start is None or not procs:
        return
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), start, json.dumps(list(procs))],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)


class _Transient(Exception):
    """Carries a teacher call's exception through Ray as one worth retrying (its ``args[0]``; ``result`` raises
    that again): anything but a TeacherError, which is the input's fault and would fail the same way."""


def worth_retrying(error: BaseException) -> bool:
    """False for a TeacherError (bad input or settings: the same call fails again), True otherwise (a lost
    worker, out of memory, a flaky read)."""
    from teachers.base import TeacherError

    return not isinstance(error, TeacherError)


def make_executor(name: str, **options: Any) -> Executor:
    """Build the executor called ``name`` ("ray" or "local") with its options."""
    if name == "local":
        return LocalExecutor(retries=options.get("retries", 3))
    if name == "ray":
        return RayExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; use ray or local")
