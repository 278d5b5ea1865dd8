"""The end of a build: the manifest from the finished base shards, rejected.jsonl, and the activation of every
column whose shards are all written (DESIGN 3: activation is the commit point; the vocabulary goes first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Collection, Mapping

from shards.atomic import atomic_write_bytes, locked
from shards.layout import column_dir, manifest_path
from shards.manifest import Manifest, ShardEntry, StoreError, StoreFault, activate_column, load_manifest, save_manifest
from shards.schema import REJECTED_NAME, VOCAB_NAME
from shards.writer import ColumnWriter

from pipeline.plan import Plan
from pipeline.units import read_rejected


def commit_split(plan: Plan, done: Mapping[str, Collection[str]], vocab_path: str | None) -> Manifest:
    """Write the manifest and activate each of the build's columns whose every shard is in ``done``.

    Args:
        plan: the build's plan; its base column must be complete.
        done: stage -> shards written (by this build or an earlier one).
        vocab_path: the vocabulary the tokens column was encoded with, when not its own.
    """
    manifest = write_manifest(plan)
    for s in plan.run_stages:
        if len(done[s]) == len(plan.shards) and manifest.columns.get(s) != plan.fps[s]:
            if s == "tokens":  # the vocabulary goes first: activation is the commit point
                publish_vocab(plan, vocab_path)
            manifest = activate_column(plan.split_path, s, plan.fps[s])
    if "tokens" in plan.fps and manifest.columns.get("tokens") == plan.fps["tokens"]:
        publish_vocab(plan, vocab_path)  # also repairs a build killed between the two steps
    return manifest


def write_manifest(plan: Plan) -> Manifest:
    """Create or refresh the manifest from the finished base shards; rewrite rejected.jsonl."""
    p, cfg = plan, plan.config
    records = ColumnWriter(p.split_path, "base", p.fps["base"]).records()
    unseen = [sh for sh in p.shards if sh not in records]
    if unseen:  # finished, yet not recorded here: a store the workers wrote elsewhere, or a damaged record
        raise StoreFault(f"base shards {', '.join(unseen[:3])}{' ...' if len(unseen) > 3 else ''} are done but "
                         f"not recorded in the base column.json under {p.split_path}: a store the cluster's "
                         "workers do not share with this machine, or a damaged record (run `shards verify`)")
    shards = [ShardEntry(sh, records[sh].count) for sh in p.shards]
    rejected = sorted((line for sh in p.shards for line in read_rejected(p.split_path, p.fps["base"], sh)),
                      key=lambda r: r["id"])
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected).encode()
    path = manifest_path(p.split_path)
    with locked(path):
        try:
            m = load_manifest(p.split_path)
        except StoreError:
            m = None
        before = m.to_json() if m is not None else None
        if m is None or m.columns.get("base") != p.fps["base"] or m.shards != shards:
            m = Manifest(split=cfg.split, size=cfg.size, shard_size=cfg.shard_size, shards=shards)
        m.rejected = len(rejected)
        m.config = cfg.to_json()  # the last build's settings: what `pipeline status` compares against
        if m.to_json() != before:
            save_manifest(p.split_path, m)
    rejected_file = p.split_path / REJECTED_NAME
    if not rejected_file.exists() or rejected_file.read_bytes() != text:
        atomic_write_bytes(rejected_file, text)
    return m


def publish_vocab(plan: Plan, vocab_path: str | None) -> None:
    """Copy the vocabulary of the requested tokens column to ``<split>/vocab.json`` unless it is there."""
    own = column_dir(plan.split_path, "tokens", plan.fps["tokens"]) / VOCAB_NAME
    src = Path(vocab_path) if vocab_path else own
    dst = plan.split_path / VOCAB_NAME
    if src.resolve() == dst.resolve() or (dst.is_file() and dst.read_bytes() == src.read_bytes()):
        return
    atomic_write_bytes(dst, src.read_bytes())
