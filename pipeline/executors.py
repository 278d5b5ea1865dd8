"""Where units run: in-process (``local``) or on a Ray cluster (``ray``), behind one small interface.

The interface, its resource checks and the local executor live here; the Ray one in ``pipeline.ray_executor``.
The build submits plain functions from ``pipeline.units``; a teacher unit gets the teacher instance its
executor holds (loaded once per process or actor) as first argument. Handles returned by ``submit`` may be
passed as arguments of later submissions (Ray resolves them where the unit runs).
"""

from __future__ import annotations

import logging
import math
import os
import sys
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
        return {stage: build_into(self.teachers, stage, factory) for stage, factory in teachers.items()}

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

def build_into(teachers: dict[str, Any], stage: str, factory: TeacherFactory) -> Any:
    """Build a stage's teacher into ``teachers``; returns its fingerprint, or the exception construction raised
    (a bad checkpoint, an unknown parameter: the driver turns it into one line)."""
    try:
        teachers[stage] = factory.build()
    except Exception as e:
        return e
    return teachers[stage].fingerprint()

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
        from pipeline.ray_executor import RayExecutor

        return RayExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; use ray or local")
