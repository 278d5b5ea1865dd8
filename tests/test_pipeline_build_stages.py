"""The stage graph and its fingerprints: what changes when one input changes."""

from __future__ import annotations

import time

import pytest

from pipeline.stages import STAGES, ancestors, dependants, fingerprint, resolve_specs
from shards.schema import COLUMNS

TEACHERS = {"pose": ("k", "fp-k"), "depth": ("d", "fp-d"), "panoptic": ("p", "fp-p"), "text": ("t", "fp-t"),
            "caption": ("c", "fp-c")}
DERIVED = {"normals": {"scale": 240.0}, "groups": {},
           "tokens": {"vocab_size": 2048, "glove": "g", "stopwords": "default"}}


def fps(size=256, shard_size=1000, teachers=TEACHERS, derived=DERIVED) -> dict[str, str]:
    return {s: fingerprint(spec) for s, spec in resolve_specs(size, shard_size, teachers, derived).items()}


def test_every_column_has_exactly_one_stage_in_graph_order() -> None:
    assert [s.name for s in STAGES] == list(COLUMNS)
    seen: set[str] = set()
    for s in STAGES:
        assert set(s.inputs) <= seen, f"{s.name} reads a later stage"
        seen.add(s.name)


def test_dependants_and_ancestors() -> None:
    assert dependants(["depth"]) == ["depth", "normals"]
    assert dependants(["caption", "panoptic"]) == ["panoptic", "groups", "caption", "tokens"]
    assert dependants(["base"]) == [s.name for s in STAGES]
    assert ancestors(["normals"]) == ["base", "depth"]
    assert ancestors(["tokens", "groups"]) == ["base", "panoptic", "caption"]
    with pytest.raises(KeyError, match="unknown stage 'dpeth'"):
        dependants(["dpeth"])


@pytest.mark.parametrize(("change", "expected"), [
    ({"teachers": {**TEACHERS, "depth": ("d", "fp-d2")}}, {"depth", "normals"}),
    ({"teachers": {**TEACHERS, "depth": ("d2", "fp-d")}}, {"depth", "normals"}),
    ({"teachers": {**TEACHERS, "caption": ("c", "fp-c2")}}, {"caption", "tokens"}),
    ({"teachers": {**TEACHERS, "panoptic": ("p", "x")}}, {"panoptic", "groups"}),
    ({"teachers": {**TEACHERS, "text": ("t", "x")}}, {"text"}),
    ({"teachers": {**TEACHERS, "pose": ("vitpose", "fp-v")}}, {"pose"}),
    ({"derived": {**DERIVED, "normals": {"scale": 120.0}}}, {"normals"}),
    ({"derived": {**DERIVED, "tokens": {**DERIVED["tokens"], "stopwords": "other"}}}, {"tokens"}),
    ({"size": 128}, {s.name for s in STAGES}),
    ({"shard_size": 10}, {s.name for s in STAGES}),
])
def test_a_change_moves_exactly_the_stage_and_its_dependants(change, expected) -> None:
    before, after = fps(), fps(**change)
    assert {s for s in before if before[s] != after[s]} == expected


def test_fingerprints_are_stable_and_distinct() -> None:
    a, b = fps(), fps()
    assert a == b
    assert len(set(a.values())) == len(a)
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in a.values())


def test_unresolved_teacher_leaves_out_its_stage_and_dependants() -> None:
    partial = {k: v for k, v in TEACHERS.items() if k != "caption"}
    got = fps(teachers=partial)
    assert set(got) == {"base", "pose", "depth", "normals", "panoptic", "groups", "text"}
    assert got["depth"] == fps()["depth"]


def test_the_png_encoder_enters_every_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    import shards.codecs as codecs

    before = fps()
    monkeypatch.setattr(codecs, "_isal_compress", None)  # PNGs from OpenCV: other bytes, so other versions
    assert codecs.png_encoder() == "opencv"
    after = fps()
    assert all(before[s] != after[s] for s in before)


def test_gpu_share_per_teacher_actor() -> None:
    from pipeline.executors import ClusterResourceError, check_gpu_share, gpus_per_actor

    assert gpus_per_actor(3, [1], None) == 0.3333  # one GPU, three teachers: a third each (Ray's 1e-4 steps)
    assert gpus_per_actor(6, [1], None) == 0.1666
    assert gpus_per_actor(3, [1, 1], None) == 0.5  # not 2/3: a share lives inside one GPU, 2/3 + 2/3 > 1
    assert gpus_per_actor(2, [8], None) == 1.0 and gpus_per_actor(2, [4, 4], None) == 1.0  # at most one each
    assert gpus_per_actor(4, [], None) == 0.0 and gpus_per_actor(4, [0, 0], None) == 0.0  # no GPU anywhere
    assert gpus_per_actor(0, [1], 0.5) == 0.0  # no teacher uses a GPU
    assert gpus_per_actor(2, [1], 0.5) == 0.5 and gpus_per_actor(2, [4], 2) == 2.0
    assert gpus_per_actor(3, [1], 0.3333) == 0.3333
    with pytest.raises(ClusterResourceError, match=r"3 GPU teacher actor\(s\) x 0.5 GPU do not fit the Ray "
                                                   r"cluster's GPUs \(1 on 1 node\(s\)\): 2 fit at once; use "
                                                   r"--gpus-per-teacher 0.3333"):
        gpus_per_actor(3, [1], 0.5)
    with pytest.raises(ClusterResourceError,
                       match=r"\(1\+1 on 2 node\(s\)\): 2 fit at once; use --gpus-per-teacher 0.5"):
        gpus_per_actor(3, [1, 1], 0.6)  # 1.8 GPUs of 2, yet one 0.6 share per GPU
    with pytest.raises(ClusterResourceError, match=r"1 fit at once"):
        gpus_per_actor(2, [2, 1], 2)  # a whole-GPU request stays on one node
    with pytest.raises(ClusterResourceError, match=r"\(0 on 0 node\(s\)\): 0 fit at once; use --gpus-per-teacher 0"):
        gpus_per_actor(1, [], 0.25)
    for bad in (-0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="a fraction up to 1 or a whole number"):
            check_gpu_share(bad)


def test_cpu_reservations_must_fit_and_leave_a_cpu_for_decoding() -> None:
    from pipeline.executors import ClusterResourceError, check_cpu_share

    check_cpu_share(4, [2.0], 0.0)  # reserving none always fits
    check_cpu_share(2, [4.0, 2.0], 2.0)  # 4 of 6 CPUs for actors, 2 for the tasks
    with pytest.raises(ClusterResourceError, match=r"1 teacher actor\(s\) x 4 CPU .* cluster's 2 CPUs on 1 node\(s\) "
                                                   r"with a CPU left for decoding: 0 fit"):
        check_cpu_share(1, [2.0], 4.0)  # Ray would wait forever to place it
    with pytest.raises(ClusterResourceError, match=r"2 fit; lower --cpus-per-teacher"):
        check_cpu_share(2, [2.0], 1.0)  # placed, but no CPU left to decode an image
    with pytest.raises(ClusterResourceError, match=r"2 fit; lower --cpus-per-teacher"):
        check_cpu_share(2, [2.0, 2.0], 1.5)  # 1 CPU left in all, but half of one on each node: no task fits
    with pytest.raises(ClusterResourceError, match=r"the Ray cluster has no CPU for decoding \(0\+0 CPUs"):
        check_cpu_share(1, [0.0, 0.0], 0.0)


def test_actor_pools_put_gpu_teachers_apart_and_the_others_together() -> None:
    import pipeline_fakes
    from pipeline.executors import TeacherFactory
    from pipeline.ray_executor import TeacherPools

    f = {"depth": TeacherFactory(pipeline_fakes.FakeDepth), "text": TeacherFactory(pipeline_fakes.FakeText),
         "panoptic": TeacherFactory(pipeline_fakes.FakePanoptic, {"device": "cpu"}),
         "caption": TeacherFactory(pipeline_fakes.FakeCaption)}
    groups = TeacherPools(actors_per_teacher=2).groups
    assert groups(f, [1]) == [(["depth"], 0.25), (["text"], 0.25), (["panoptic", "caption"], 0.0)]
    assert groups(f, []) == [(["depth", "text", "panoptic", "caption"], 0.0)]  # no GPU: one shared pool
    assert TeacherPools(gpus_per_teacher=0).groups(f, [1]) == [(list(f), 0.0)]
    assert TeacherPools(shared_actors=False).groups(f, [1, 1]) == [
        (["depth"], 1.0), (["text"], 1.0), (["panoptic"], 0.0), (["caption"], 0.0)]
    assert TeacherPools(shared_actors=True, gpus_per_teacher=0.5).groups(f, [1]) == [(list(f), 0.5)]


def test_a_teacher_actor_without_a_gpu_runs_model_teachers_on_cpu() -> None:
    import pipeline_fakes
    from pipeline.executors import TeacherFactory

    auto = TeacherFactory(pipeline_fakes.FakeDepth, {"device": "auto", "batch_size": 2})
    assert auto.wants_gpu() and auto.without_gpu().kwargs == {"device": "cpu", "batch_size": 2}
    cuda = TeacherFactory(pipeline_fakes.FakeDepth, {"device": "cuda:1"})
    assert cuda.without_gpu() is cuda  # an explicit device is the user's (the build refuses cuda with 0 GPUs)
    reader = TeacherFactory(pipeline_fakes.FakeCaption, {"device": "auto"})
    assert not reader.wants_gpu() and reader.without_gpu() is reader  # ground truth ignores its device
    assert not TeacherFactory(pipeline_fakes.FakeDepth, {"device": "cpu"}).wants_gpu()


def test_auto_device_is_cpu_for_a_teacher_that_never_uses_a_gpu(monkeypatch) -> None:
    import torch

    import pipeline_fakes
    from pipeline.executors import TeacherFactory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine (or an actor that sees one)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert TeacherFactory(pipeline_fakes.FakeDepth, {"device": "auto"}).build().device == "cuda"
    assert TeacherFactory(pipeline_fakes.FakeCaption, {"device": "auto"}).build().device == "cpu"


def test_a_teacher_actor_runs_one_model_call_at_a_time_and_does_not_count_the_wait() -> None:
    import threading

    from pipeline.ray_executor import _OneAtATime

    spans, lock = [], threading.Lock()

    class Slow:
        name = "slow"

        def __call__(self, inputs):
            start = time.perf_counter()
            time.sleep(0.2)
            spans.append((start, time.perf_counter()))
            return inputs

    teacher = _OneAtATime(Slow(), lock)
    waits: dict[str, float] = {}

    def call(tag: str) -> None:
        assert teacher(tag) == tag and teacher.name == "slow"
        waits[tag] = teacher.take_wait()

    threads = [threading.Thread(target=call, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (s0, e0), (s1, e1) = sorted(spans)
    assert s1 >= e0  # never two model calls at once
    assert min(waits.values()) < 0.05 and max(waits.values()) > 0.15  # the second waited for the first's turn
    assert teacher.take_wait() == 0.0  # per thread: this one never called
