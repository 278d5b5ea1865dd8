"""The ``ray`` executor: teachers in Ray actor pools (model loaded once per actor), every other unit a Ray CPU task.

Three jobs, one piece each: ``connect`` joins or starts the cluster; ``TeacherPools`` lays the teachers out in
actors and sends each teacher call to the least busy actor of its pool; ``RayExecutor`` is the ``Executor`` the
build talks to.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from pipeline.executors import (ClusterConnectionError, Executor, TeacherFactory, build_into, check_cpu_share,
                                gpus_per_actor, quiet_model_loading, whole_gpus, worth_retrying)
from pipeline.processes import descendants, fate_share


def connect(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at ``address`` or start a local one, unless this process already did.

    Returns:
        Whether this call initialised Ray here (``ray.shutdown`` then disconnects, and takes down a local cluster
        started here, whose processes also end with this one after a kill -9).

    Raises:
        ClusterConnectionError: Ray could not join the cluster (one line; token authentication named).
    """
    import ray

    if ray.is_initialized():
        return False
    if not (sys.stdout.isatty() and sys.stderr.isatty()):  # the workers' log lines, copied here, go to a
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # file or a pipe: no colour codes in them
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        # A local cluster turns on token authentication by default and says so on stderr at every
        # start; it stays on, only the notice is kept out of the build's output.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    handler = signal.getsignal(signal.SIGTERM)  # the command's own (stop cleanly), which Ray's driver replaces
    before = set(descendants(os.getpid())) if not address else set()
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
        raise ClusterConnectionError(f"cannot join the Ray cluster at {address}: {first[:200]}{hint}") from None
    if not address:  # a cluster started here: its processes end with this one, even after a kill -9
        fate_share([p for p in descendants(os.getpid()) if p not in before])
    return True


def alive_nodes() -> list[dict[str, float]]:
    """The resources of each live node of the joined cluster."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


class TeacherPools:
    """The teacher actors: which stages share an actor, what each reserves, and how busy each is.

    Args: those of ``RayExecutor`` with the same names.
    """

    def __init__(self, gpus_per_teacher: float | None = None, cpus_per_teacher: float = 0.0,
                 actors_per_teacher: int = 1, shared_actors: bool | None = None, retries: int = 3,
                 quiet: bool = False, overlap: bool | None = None) -> None:
        self.overlap = overlap
        self.gpus_per_teacher = gpus_per_teacher
        self.cpus_per_teacher = cpus_per_teacher
        self.actors_per_teacher = actors_per_teacher
        self.shared_actors = shared_actors
        self.retries = retries
        self.quiet = quiet
        self.pools: dict[str, list[Any]] = {}  # stage -> its pool's actors
        self.load: dict[Any, int] = {}  # actor -> calls in flight
        self.owner: dict[Any, Any] = {}  # teacher call handle -> actor
        self.placement: dict[str, str] = {}  # "stage+stage" -> what its actors reserve, in words

    def groups(self, teachers: Mapping[str, TeacherFactory], node_gpus: Sequence[float]
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

    def concurrency(self, gpus: float) -> int:
        """Teacher units an actor of ``gpus`` GPUs runs at once: ``ACTOR_CONCURRENCY`` where its model calls run
        on a GPU (``overlap`` None) or where asked (True), so that the CPU work around a model call overlaps the
        next one; 1 on CPU, where both would only share the same cores."""
        return ACTOR_CONCURRENCY if (self.overlap if self.overlap is not None else gpus > 0) else 1

    def start(self, teachers: Mapping[str, TeacherFactory], nodes: Sequence[Mapping[str, float]]) -> dict[str, Any]:
        """Start the actors on a cluster of ``nodes``; returns each stage's fingerprint, or why it did not load."""
        import ray

        groups = self.groups(teachers, [r.get("GPU", 0.0) for r in nodes])
        check_cpu_share(len(groups) * self.actors_per_teacher, [r.get("CPU", 0.0) for r in nodes],
                        self.cpus_per_teacher)
        n = self.actors_per_teacher
        for stages, gpus in groups:
            worker = ray.remote(_TeacherWorker).options(num_gpus=gpus, num_cpus=self.cpus_per_teacher,
                                                         max_restarts=self.retries, max_task_retries=self.retries,
                                                         max_concurrency=self.concurrency(gpus))
            hosted = {s: teachers[s] if gpus else teachers[s].without_gpu() for s in stages}
            pool = [worker.remote(hosted, self.quiet) for _ in range(n)]
            self.pools.update({s: pool for s in stages})
            self.load.update({actor: 0 for actor in pool})
            self.placement["+".join(stages)] = (f"{n} actor{'s' * (n > 1)} x {gpus:g} GPU" if gpus
                                                else f"{n} CPU actor{'s' * (n > 1)}")
        out: dict[str, Any] = {}
        for stage in teachers:  # every actor of a pool loads the same teacher: its first one answers
            try:
                out[stage] = ray.get(self.pools[stage][0].fingerprint.remote(stage))
            except ray.exceptions.RayActorError as e:  # the process died while loading (out of memory, ...)
                out[stage] = RuntimeError(f"its actor died while loading it: {e.error_msg.splitlines()[0]}")
        return out

    def call(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(teacher, *args)`` on the least busy actor of the stage's pool; returns the call's handle."""
        actor = min(self.pools[stage], key=lambda a: self.load[a])
        ref = actor.run.options(retry_exceptions=[_Transient]).remote(stage, fn, *args)
        self.load[actor] += 1
        self.owner[ref] = actor
        return ref

    def reap(self) -> None:
        """Count the calls that finished off their actors' load."""
        import ray

        if self.owner:
            calls = list(self.owner)
            finished, _ = ray.wait(calls, num_returns=len(calls), timeout=0, fetch_local=False)
            for ref in finished:
                self.load[self.owner.pop(ref)] -= 1

    def close(self, kill: bool) -> None:
        """Forget the actors; ``kill`` them first (on a cluster that does not go down with the build)."""
        import ray

        if kill:
            for actor in self.load:
                ray.kill(actor)
        self.pools.clear()
        self.load.clear()
        self.owner.clear()
        self.placement.clear()


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
        overlap: let a teacher actor map one unit's predictions while its model runs the next (two units at once,
            model calls one at a time); ``None`` = on for actors that reserve a GPU.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 gpus_per_teacher: float | None = None, cpus_per_teacher: float = 0.0,
                 actors_per_teacher: int = 1, shared_actors: bool | None = None, retries: int = 3,
                 quiet: bool = False, overlap: bool | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.retries = retries
        self.teachers = TeacherPools(gpus_per_teacher, cpus_per_teacher, actors_per_teacher, shared_actors, retries,
                                     quiet, overlap)
        self._remote: dict[Callable[..., Any], Any] = {}
        self._started_here = False

    def _connect(self) -> None:
        self._started_here = connect(self.address, self.num_cpus) or self._started_here

    def start(self, teachers: Mapping[str, TeacherFactory]) -> dict[str, Any]:
        self._connect()
        return self.teachers.start(teachers, alive_nodes())

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

        nodes = alive_nodes()
        return {"address": ray.get_runtime_context().gcs_address, "nodes": len(nodes),
                "cpus": sum(r.get("CPU", 0.0) for r in nodes), "gpus": sum(r.get("GPU", 0.0) for r in nodes)}

    def submit(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        import ray

        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn)
        remote = self._remote[fn].options(num_returns=num_returns, max_retries=self.retries,
                                          retry_exceptions=True)
        return remote.remote(*args)

    def submit_teacher(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        return self.teachers.call(stage, fn, *args)

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        import ray

        self.teachers.reap()  # teacher calls that finished free their actor for the next shard
        done, _ = ray.wait(list(handles), num_returns=1, timeout=timeout, fetch_local=False)
        if done:  # collect everything else that is already finished too
            more, _ = ray.wait(list(handles), num_returns=len(handles), timeout=0, fetch_local=False)
            done = more or done
        return done

    def placement(self) -> dict[str, str]:
        return dict(self.teachers.placement)

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

        # a cluster started here goes down whole below: killing its actors one by one first made Ray report each
        # of their calls in flight as failed and retried
        self.teachers.close(kill=not self._started_here)
        if self._started_here:
            ray.shutdown()


class _Transient(Exception):
    """Carries a teacher call's exception through Ray as one worth retrying (its ``args[0]``; ``result`` raises
    that again): anything but a TeacherError, which is the input's fault and would fail the same way."""


#: teacher calls an actor runs at once: one in the model while the previous one maps its predictions into store
#: geometry (CPU work that would otherwise leave the GPU idle between shards)
ACTOR_CONCURRENCY = 2


class _OneAtATime:
    """A teacher whose model calls take turns (a lock shared by every teacher of the actor), while whatever its
    caller does around them runs beside: the next shard's model call overlaps the last one's mapping."""

    def __init__(self, teacher: Any, lock: threading.Lock) -> None:
        self._teacher, self._lock = teacher, lock
        self._waits = threading.local()

    def __call__(self, inputs: Any) -> Any:
        t0 = time.perf_counter()
        with self._lock:
            self._waits.seconds = getattr(self._waits, "seconds", 0.0) + time.perf_counter() - t0
            return self._teacher(inputs)

    def take_wait(self) -> float:
        """Seconds this thread's calls waited for their turn since the last ``take_wait`` (not the unit's work)."""
        seconds, self._waits.seconds = getattr(self._waits, "seconds", 0.0), 0.0
        return seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._teacher, name)


class _TeacherWorker:
    """The body of a teacher actor: builds its teachers (one or several stages') once, then runs teacher
    units with the one of the unit's stage. A teacher that fails to build is reported by ``fingerprint``
    instead of killing the actor (and with it the other teachers it hosts). Its units may run several at a time
    (``TeacherPools.concurrency``), their model calls always one at a time."""

    def __init__(self, factories: Mapping[str, TeacherFactory], quiet: bool = False) -> None:
        if quiet:
            quiet_model_loading()
        self.teachers: dict[str, Any] = {}
        self.built = {stage: build_into(self.teachers, stage, factory) for stage, factory in factories.items()}
        lock = threading.Lock()
        self.teachers = {stage: _OneAtATime(teacher, lock) for stage, teacher in self.teachers.items()}

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
