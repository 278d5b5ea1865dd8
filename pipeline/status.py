"""``pipeline status``: for each stage of a split, the active and the requested column version and how many
shards are done, stale or missing.

Status takes its settings from the user only: the defaults, ``--config FILE`` and the flags, as
``build-targets`` does. A store describes data (its manifest's active versions and shard plan, the teachers'
fingerprints its builds recorded in ``teachers.json``); it never chooses a teacher, a checkpoint, a config
file or any other path that status would read or run, so the settings a build recorded in the manifest (or in
``build-report.json``) are at most shown, never used. Without ``--recheck`` no teacher is loaded: a teacher
whose fingerprint for the user's settings no build recorded is *unconfirmed*, and so are the stages that read
it; ``--recheck`` loads the teachers of the user's settings to fingerprint them.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from shards.layout import split_dir
from shards.manifest import StoreError, load_manifest
from shards.schema import VOCAB_NAME
from shards.writer import ColumnWriter

from pipeline.executors import LocalExecutor, TeacherFactory, quiet_model_loading
from pipeline.plan import HASH_THREADS, BuildError, check_stages, prepare
from pipeline.stages import STAGES, TEACHER_STAGES, dependants
from pipeline.units import rejected_path

if TYPE_CHECKING:
    from pipeline.config import BuildConfig

#: The teacher fingerprint ``prepare`` gets for a teacher status does not load (the stage is reported as
#: unconfirmed; the column fingerprints computed from it are never shown nor compared).
UNCONFIRMED = "unconfirmed"


class _NoTeachers(LocalExecutor):
    """``prepare``'s executor in a status query without ``--recheck``: it constructs no teacher; every teacher
    the recorded fingerprints do not cover gets ``UNCONFIRMED`` as its fingerprint."""

    name = "status"

    def start(self, teachers: Mapping[str, TeacherFactory]) -> dict[str, Any]:
        return {stage: UNCONFIRMED for stage in teachers}


def split_status(config: "BuildConfig", recheck: bool = False) -> dict[str, Any]:
    """Status of every stage of ``config.split`` (of ``config.stages`` and their dependants, if given) against the
    versions ``config`` asks for; ``config`` is the user's (never settings read from the store).

    A shard is *done* when the requested version holds it (record, size and sha256 valid; for base also its
    list of rejected images), *stale* when only the active, older version holds it, else *missing*. A teacher's
    fingerprint comes from the split's ``teachers.json`` when a build recorded it for the same settings
    (``pipeline.teacher_record``); otherwise the teacher's stage and the stages that read it are
    ``unconfirmed`` (requested version, done, stale and missing unknown: None). With ``recheck`` every teacher
    is loaded here, with ``config``'s settings, to compute its fingerprint.

    Returns:
        {"split", "shards", "settings": "given",
        "stages": [{"stage", "active", "requested", "done", "stale", "missing", "state"}],
        "teachers": {"recorded": [stage, ...], "loaded": [stage, ...], "unconfirmed": [stage, ...]}}.
    """
    check_stages(config.stages)
    shown = dependants(config.stages) if config.stages else [st.name for st in STAGES]
    config = dataclasses.replace(config, stages=(), force=False)  # every stage planned, nothing forced
    if str(config.device).startswith("cuda"):  # a build's GPU setting, queried where no GPU is (a login node)
        import torch

        if not torch.cuda.is_available():
            config = dataclasses.replace(config, device="cpu")  # the device enters no fingerprint
    if recheck:
        quiet_model_loading()  # a status query loads teachers only to fingerprint them: no bars
        plan = prepare(config, reuse_recorded="never")
        loaded, unconfirmed = list(plan.factories), []
    else:  # no "loading teachers" line: none is loaded
        plan = prepare(dataclasses.replace(config, progress=False), _NoTeachers(), reuse_recorded="always")
        loaded, unconfirmed = [], [s for s in TEACHER_STAGES if s in plan.factories]
    unknown = set(dependants(unconfirmed)) if unconfirmed else set()
    rows = []
    for s in shown:
        requested, active = plan.fps[s], plan.active.get(s)
        if s in unknown:  # its requested version is not known without loading a teacher
            rows.append({"stage": s, "active": active, "requested": None, "done": None, "stale": None,
                         "missing": None, "state": "unconfirmed"})
            continue
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
    return {"split": config.split, "shards": len(plan.shards), "settings": "given", "stages": rows,
            "teachers": {"recorded": list(plan.recorded), "loaded": loaded, "unconfirmed": unconfirmed}}


def store_status(out: str, split: str, stages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Status of a split's active versions when the user gave no settings: the store's own data only (its
    manifest's shard plan and active versions, the shards' records and sha256); no teacher, COCO file or
    setting is read. ``requested`` is None (no settings to ask for one), a stage is ``current`` when its active
    version holds every shard, ``incomplete`` when not, ``not built`` without an active version.

    Returns:
        as ``split_status`` with ``"settings": None``, plus ``"built_with"``: the teachers the manifest says the
        last build used, to be shown, never used; a split whose first build never wrote its manifest has
        ``"shards": None``, no stages and ``"started": True``.
    """
    check_stages(stages)
    shown = dependants(stages) if stages else [st.name for st in STAGES]
    split_path = split_dir(Path(out).expanduser(), split)
    empty = {"recorded": [], "loaded": [], "unconfirmed": []}
    if not (split_path / "manifest.json").exists():  # a first build killed before its manifest
        return {"split": split, "shards": None, "settings": None, "stages": [], "teachers": empty,
                "built_with": {}, "started": True}
    try:
        manifest = load_manifest(split_path)
    except StoreError as e:  # a damaged manifest is said, not taken for a split never built
        raise BuildError(f"{e}; the next build-targets of the split rewrites it") from None
    shards = manifest.shard_names
    rows = []
    for s in shown:
        active = manifest.columns.get(s)
        done = 0
        if active is not None:
            held = ColumnWriter(split_path, s, active).done_shards(shards, threads=HASH_THREADS)
            if s == "base":  # a base unit is finished with its list of rejected images
                held = {sh for sh in held if rejected_path(split_path, active, sh).is_file()}
            done = len(held)
        if active is None:
            state = "not built"
        elif done == len(shards) and (s != "tokens" or _vocab_ok(split_path)):
            state = "current"
        else:
            state = "incomplete"
        rows.append({"stage": s, "active": active, "requested": None, "done": done, "stale": 0,
                     "missing": len(shards) - done, "state": state})
    recorded = manifest.config if isinstance(manifest.config, dict) else {}
    built_with = {s: recorded[f"{s}_teacher"] for s in TEACHER_STAGES if isinstance(recorded.get(f"{s}_teacher"), str)}
    return {"split": split, "shards": len(shards), "settings": None, "stages": rows, "teachers": empty,
            "built_with": built_with}


def _vocab_ok(split_path: Path) -> bool:
    """Whether the split's ``vocab.json``, which the tokens column's ids index, loads."""
    from shards.vocab import Vocabulary

    try:
        Vocabulary.load(split_path / VOCAB_NAME)
    except ValueError:
        return False
    return True


def _shown(text: str, limit: int = 64) -> str:
    """A string read from a store, safe to print: no control characters (terminal escapes), at most ``limit``
    characters."""
    clean = "".join(c if unicodedata.category(c)[0] not in "CZ" or c == " " else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit - 3] + "..."


def format_status(status: dict[str, Any]) -> str:
    """A readable table of ``split_status``'s (or ``store_status``'s) result."""
    if status.get("started"):
        return (f"{status['split']}: a first build started and has not finished (build-report.json, no "
                "manifest.json yet); give its settings (--config FILE or the same flags) to see its progress")
    head = ("stage", "state", "active", "requested", "done", "stale", "missing")

    def count(value: int | None) -> str:
        return "?" if value is None else str(value)

    rows = [head] + [(r["stage"], r["state"], (r["active"] or "-")[:12],
                      ("-" if status.get("settings") is None else "?") if r["requested"] is None
                      else r["requested"][:12], count(r["done"]), count(r["stale"]), count(r["missing"]))
                     for r in status["stages"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if status.get("settings") is None:
        lines.append("no settings given: the states are those of the active versions (current: every shard "
                     "valid); give the build's settings (--config FILE or its flags) to compare against them "
                     "(status takes no settings from the store)")
        built = status.get("built_with") or {}
        if built:
            lines.append("the manifest says the last build used: "
                         + ", ".join(f"{s} {_shown(name)}" for s, name in built.items()))
        return "\n".join([f"{status['split']}: {status['shards']} shards"] + lines)
    teachers = status.get("teachers", {})
    sources = [f"{', '.join(teachers[k])} {how}" for k, how in (
        ("recorded", "as recorded by a build with the same settings and files"), ("loaded", "loaded now"),
        ("unconfirmed", ("unconfirmed: no build recorded their fingerprint for these settings, and status loads "
                         "no teacher unless asked (--recheck loads them, with these settings)")))
        if teachers.get(k)]
    if sources:
        lines.append(f"teacher versions: {'; '.join(sources)}"
                     + (" (--recheck loads every teacher)" if teachers.get("recorded")
                        and not teachers.get("unconfirmed") else ""))
    return "\n".join([f"{status['split']}: {status['shards']} shards"] + lines)
