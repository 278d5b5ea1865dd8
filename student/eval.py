"""`student eval`: score a checkpoint against the teacher targets of a store split (the paper's Table III layout)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from shards.manifest import StoreError
from shards.reader import load_manifest_at
from shards.taxonomy import CHANNEL_GROUPS, NUM_TOKENS
from student.data import close_loader, error_line, make_loader, open_split, to_device
from student.metrics import HDM_THRESHOLDS, MetricSums
from student.targets import TargetSizes

#: Row names of the table, in channel order (DESIGN 5.1).
MODALITIES: tuple[str, ...] = tuple(g.name for g in CHANNEL_GROUPS)


def evaluate(model: Callable[[torch.Tensor], dict[str, torch.Tensor]], root: str | Path, split: str, *,
             limit: int | None = None, batch_size: int = 8, workers: int = 0, device: str = "cpu",
             sizes: TargetSizes = TargetSizes(), progress: bool = True) -> dict[str, Any]:
    """Run ``model`` over (the first ``limit`` samples of) a split and compare it with the store's targets.

    Args:
        model: maps uint8 (B, 3, S, S) images to ``{"maps": (B, 44, S, S), "tokens": (B, 8, 300)}``.
        root: store root.
        split: split to score, e.g. ``"val2017"``.
        limit: score the first this many samples in store order (None = all); at most one loader worker then.
        batch_size: samples per forward pass.
        workers: DataLoader workers.
        device: torch device.
        sizes: heatmap / PAF sizes; the final sizes of the schedule are used.
        progress: show a progress bar.

    Returns:
        ``{"split", "samples", "modalities": {name: {"hdm@T": ..., "mse": ...}}, "tokens": {"cos": [8 values,
        None for slots that are empty in every target], "mean": ...}}``.
    """
    from tqdm import tqdm

    dataset = open_split(root, split, train=False, batch_size=batch_size, sizes=sizes)
    total = dataset.manifest.num_samples if limit is None else min(limit, dataset.manifest.num_samples)
    sums = MetricSums(device)
    seen = 0
    bar = tqdm(total=total, desc=f"eval {split}", unit="img", disable=not progress, file=sys.stderr)
    if limit is not None:  # several workers interleave their shards; one keeps the store's order (first N)
        workers = min(workers, 1)
    batches = iter(make_loader(dataset, workers))
    try:
        with torch.no_grad():
            for host in batches:
                if seen >= total:
                    break
                keep = min(total - seen, len(host["key"]))
                batch = to_device({k: v[:keep] for k, v in host.items() if isinstance(v, torch.Tensor)},
                                  torch.device(device))
                out = model(batch["images"])
                sums.update(out["maps"], batch["targets"], out["tokens"], batch["glove"],
                            pose_mask=batch["pose_mask"])
                dataset.release(host)
                seen += keep
                bar.update(keep)
    finally:
        close_loader(batches)  # now, also after an error (see close_loader)
        bar.close()
    return _table(sums.compute(), split, seen)


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _table(metrics: dict[str, float], split: str, samples: int) -> dict[str, Any]:
    modalities = {name: {**{f"hdm@{t}": _clean(metrics[f"{name}/hdm@{t}"]) for t in HDM_THRESHOLDS},
                         "mse": _clean(metrics[f"{name}/mse"])} for name in MODALITIES}
    cos = [_clean(metrics[f"tokens/cos{i}"]) for i in range(NUM_TOKENS)]
    return {"split": split, "samples": samples, "modalities": modalities,
            "tokens": {"cos": cos, "mean": _clean(metrics["tokens/cos"])}}


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table: one row per modality (HDM at each threshold, MSE), then token cosines."""
    head = f"{'modality':<10}" + "".join(f"{'HDM@' + str(t):>10}" for t in HDM_THRESHOLDS) + f"{'MSE':>10}"
    lines = [f"{result['split']}: {result['samples']} samples", head, "-" * len(head)]
    for name, row in result["modalities"].items():
        cells = [row[f"hdm@{t}"] for t in HDM_THRESHOLDS] + [row["mse"]]
        lines.append(f"{name:<10}" + "".join(f"{_cell(v):>10}" for v in cells))
    cos = result["tokens"]["cos"]
    lines += ["", "caption token cosine similarity", "".join(f"{'#' + str(i + 1):>8}" for i in range(len(cos)))
              + f"{'mean':>8}", "".join(f"{_cell(v, 3):>8}" for v in cos) + f"{_cell(result['tokens']['mean'], 3):>8}"]
    return "\n".join(lines)


def _cell(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``student eval``."""
    parser.add_argument("--checkpoint", required=True, help="student checkpoint")
    parser.add_argument("--shards", default="shards", help="store root (default: shards)")
    parser.add_argument("--split", default="val2017", help="split to score (default: val2017)")
    parser.add_argument("--limit", type=int, help="score only the first N samples")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _sizes(extra: dict[str, Any]) -> TargetSizes:
    """The target sizes the checkpoint was trained with (its train config), else the defaults."""
    for key in ("train_cfg", "train_config", "config"):
        cfg = extra.get(key)
        if isinstance(cfg, dict) and "heatmap_radius" in cfg:
            return TargetSizes(tuple(cfg["heatmap_radius"]), tuple(cfg.get("paf_width", (6, 2))),
                               int(cfg.get("size_step_epochs", 20)))
    return TargetSizes()


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write JSON; exit code 2 for a missing checkpoint or store."""
    from student.checkpoint import CheckpointError, load_checkpoint

    for flag, value, least in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                               ("--workers", args.workers, 0)):
        if value is not None and value < least:
            print(f"student eval: error: {flag} must be >= {least}, got {value}", file=sys.stderr)
            return 2
    try:
        manifest = load_manifest_at(args.shards, args.split)
        model, cfg, extra = load_checkpoint(args.checkpoint, map_location=args.device)
    except (StoreError, CheckpointError) as e:
        print(f"student eval: error: {e}", file=sys.stderr)
        return 2
    if manifest.num_samples == 0:
        print(f"student eval: error: split {args.split!r} of store {args.shards} has no samples "
              f"({manifest.rejected} images rejected: see its rejected.jsonl)", file=sys.stderr)
        return 2
    if manifest.size != cfg.image_size:
        print(f"student eval: error: store {args.shards}/{args.split} has {manifest.size}-pixel samples but the "
              f"checkpoint expects {cfg.image_size}", file=sys.stderr)
        return 2
    try:
        result = evaluate(model, args.shards, args.split, limit=args.limit, batch_size=args.batch_size,
                          workers=args.workers, device=args.device, sizes=_sizes(extra),
                          progress=not args.no_progress)
    except StoreError as e:
        print(f"student eval: error: {error_line(e)}", file=sys.stderr)
        return 2
    result["checkpoint"] = str(args.checkpoint)
    if args.json:  # before the table: a closed stdout (`| head`) must not lose the file
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1))
        except OSError as e:
            print(f"student eval: error: cannot write --json {args.json}: {e.strerror or e}", file=sys.stderr)
            return 1
    print(format_table(result))
    if args.json:
        print(f"wrote {args.json}")
    return 0
