"""The stage graph and its fingerprints: what changes when one input changes."""

from __future__ import annotations

import pytest

from pipeline.stages import STAGES, ancestors, dependants, fingerprint, resolve_specs
from shards.schema import COLUMNS

TEACHERS = {"depth": ("d", "fp-d"), "panoptic": ("p", "fp-p"), "text": ("t", "fp-t"), "caption": ("c", "fp-c")}
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
    assert set(got) == {"base", "depth", "normals", "panoptic", "groups", "text"}
    assert got["depth"] == fps()["depth"]


def test_the_png_encoder_enters_every_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    import shards.codecs as codecs

    before = fps()
    monkeypatch.setattr(codecs, "_isal_compress", None)  # PNGs from OpenCV: other bytes, so other versions
    assert codecs.png_encoder() == "opencv"
    after = fps()
    assert all(before[s] != after[s] for s in before)
