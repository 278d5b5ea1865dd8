"""``pipeline status``: for each stage of a split, the active and the requested column version and how many
shards are done, stale or missing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shards.schema import VOCAB_NAME
from shards.writer import ColumnWriter

from pipeline.executors import quiet_model_loading
from pipeline.plan import check_stages, prepare
from pipeline.stages import STAGES, dependants

if TYPE_CHECKING:
    from pipeline.build import BuildConfig


def split_status(config: "BuildConfig", recheck: bool = False) -> dict[str, Any]:
    """Status of every stage of ``config.split`` (of ``config.stages`` and their dependants, if given) against the
    versions ``config`` asks for.

    A shard is *done* when the requested version holds it (record, size and sha256 valid; for base also its
    list of rejected images), *stale* when only
    the active, older version holds it, else *missing*. A teacher's fingerprint comes from the split's
    ``teachers.json`` when a build recorded it for the same settings (``pipeline.teacher_record``); otherwise,
    and for every teacher with ``recheck``, the teacher is loaded here to compute it.

    Returns:
        {"split", "shards", "stages": [{"stage", "active", "requested", "done", "stale", "missing", "state"}],
        "teachers": {"recorded": [stage, ...], "loaded": [stage, ...]}}.
    """
    quiet_model_loading()  # a status query loads teachers only to fingerprint them: no bars
    check_stages(config.stages)
    shown = dependants(config.stages) if config.stages else [st.name for st in STAGES]
    config = dataclasses.replace(config, stages=(), force=False)  # every stage planned, nothing forced
    if str(config.device).startswith("cuda"):  # a build's GPU setting, queried where no GPU is (a login node)
        import torch

        if not torch.cuda.is_available():
            config = dataclasses.replace(config, device="cpu")  # the device enters no fingerprint
    plan = prepare(config, reuse_recorded=not recheck)
    rows = []
    for s in shown:
        requested, active = plan.fps[s], plan.active.get(s)
        pending = plan.pending[s]  # the shards the requested version lacks (sha256 checked by the planner)
        done = len(plan.shards) - len(pending)
        stale = 0
        if active and active != requested:
            stale = len(ColumnWriter(plan.split_path, s, active).done_shards(pending, check_sha256=False))
        if active == requested:  # a shard of it (or the split's vocab.json) missing or damaged: a build repairs it
            state = "current" if done == len(plan.shards) and (s != "tokens" or _vocab_ok(plan.split_path)) \
                else "incomplete"
        elif active is None:
            state = "partial" if done else "not built"
        else:
            state = "stale"
        rows.append({"stage": s, "active": active, "requested": requested, "done": done, "stale": stale,
                     "missing": len(plan.shards) - done - stale, "state": state})
    return {"split": config.split, "shards": len(plan.shards), "stages": rows,
            "teachers": {"recorded": list(plan.recorded), "loaded": list(plan.factories)}}


def _vocab_ok(split_path: Path) -> bool:
    """Whether the split's ``vocab.json``, which the tokens column's ids index, loads."""
    from shards.vocab import Vocabulary

    try:
        Vocabulary.load(split_path / VOCAB_NAME)
    except ValueError:
        return False
    return True


def format_status(status: dict[str, Any]) -> str:
    """A readable table of ``split_status``'s result."""
    head = ("stage", "state", "active", "requested", "done", "stale", "missing")
    rows = [head] + [(r["stage"], r["state"], (r["active"] or "-")[:12], r["requested"][:12], str(r["done"]),
                      str(r["stale"]), str(r["missing"])) for r in status["stages"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    teachers = status.get("teachers", {})
    sources = [f"{', '.join(teachers[k])} {how}" for k, how in (
        ("recorded", "as recorded by a build with the same settings and files"), ("loaded", "loaded now"))
        if teachers.get(k)]
    if sources:
        lines.append(f"teacher versions: {'; '.join(sources)}"
                     + (" (--recheck loads every teacher)" if teachers.get("recorded") else ""))
    return "\n".join([f"{status['split']}: {status['shards']} shards"] + lines)
