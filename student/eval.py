"""`student eval`: score a checkpoint against the teacher targets of a store split (the paper's Table III layout),
plus the figures an all-background output cannot pass (``student.scoring``)."""

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
from shards.schema import VOCAB_NAME
from shards.taxonomy import CHANNEL_GROUPS, CHANNELS, NUM_TOKENS
from shards.vocab import Vocabulary, decode_glove
from student.config import TrainConfig
from student.data import close_loader, error_line, exit_code, make_loader, open_split, to_device
from student.metrics import HDM_THRESHOLDS, IOU_GROUPS, MetricSums
from student.postprocess import find_peaks, group_people
from student.scoring import LearningScores
from student.targets import TargetSizes

#: Row names of the table, in channel order (DESIGN 5.1).
MODALITIES: tuple[str, ...] = tuple(g.name for g in CHANNEL_GROUPS)


def evaluate(model: Callable[[torch.Tensor], dict[str, torch.Tensor]], root: str | Path, split: str, *,
             limit: int | None = None, batch_size: int = 8, workers: int = 0, device: str = "cpu",
             sizes: TargetSizes = TargetSizes(), vocab: Vocabulary | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run ``model`` over (the first ``limit`` samples of) a split and compare it with the store's targets.

    Args:
        model: maps uint8 (B, 3, S, S) images to ``{"maps": (B, 44, S, S), "tokens": (B, 8, 300)}``.
        root: store root.
        split: split to score, e.g. ``"val2017"``.
        limit: score the first this many samples in store order (None = all); at most one loader worker then.
        batch_size: samples per forward pass.
        workers: DataLoader workers.
        device: torch device.
        sizes: heatmap / PAF sizes; the final sizes of the schedule are used (``TargetSizes.fixed(r, w)`` for
            the sizes r, w of a checkpoint).
        vocab: the caption vocabulary, for word recall (None: not scored).
        progress: show a progress bar.

    Returns:
        ``{"split", "samples", "modalities": {name: {"hdm@T": ..., "mse": ..., "iou": ... (joints, text,
        groups)}}, "tokens": {"cos": [8 values as the paper reports them: every sample, an empty target slot
        scoring 0], "mean", "cos_nonempty": [8 values over non-empty target slots, None where every one is
        empty], "mean_nonempty"}, "learning": LearningScores.compute()}``.
    """
    from tqdm import tqdm

    dataset = open_split(root, split, train=False, batch_size=batch_size, sizes=sizes)
    dataset.with_labels = True
    total = dataset.manifest.num_samples if limit is None else min(limit, dataset.manifest.num_samples)
    sums, scores = MetricSums(device), LearningScores()
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
                _score(scores, out, host, keep, vocab)
                dataset.release(host)
                seen += keep
                bar.update(keep)
    finally:
        close_loader(batches)  # now, also after an error (see close_loader)
        bar.close()
    result = _table(sums.compute(), split, seen)
    result["learning"] = scores.compute()
    return result


def _score(scores: LearningScores, out: dict[str, torch.Tensor], host: dict[str, Any], keep: int,
           vocab: Vocabulary | None) -> None:
    """Add the first ``keep`` samples of a batch to the learning scores: people grouped from the predicted maps
    (as ``student predict`` does) against the pose column's keypoints, decoded words against the caption's first 8
    vocabulary words, multi-hot labels against the same ids."""
    maps = out["maps"][:keep].float().cpu().numpy()
    tokens = out["tokens"][:keep].float().cpu().numpy()
    hot = out["multihot"][:keep].float().cpu().numpy() if "multihot" in out else None
    for i in range(keep):
        peaks = find_peaks(maps[i, CHANNELS["joints"].slice])
        scores.add_pose(group_people(peaks, maps[i, CHANNELS["pafs"].slice]), host["keypoints"][i],
                        host["pose_mask"][i].numpy())
        ids = host["token_ids"][i]
        if vocab is not None:
            truth = [vocab.words[j] for j in ids[:NUM_TOKENS] if 0 <= j < len(vocab)]
            scores.add_words([w[0] if w else None for w in decode_glove(tokens[i], vocab)], truth)
        if hot is not None:
            scores.add_labels(hot[i], ids)


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _table(metrics: dict[str, float], split: str, samples: int) -> dict[str, Any]:
    modalities = {name: {**{f"hdm@{t}": _clean(metrics[f"{name}/hdm@{t}"]) for t in HDM_THRESHOLDS},
                         "mse": _clean(metrics[f"{name}/mse"]),
                         **({"iou": _clean(metrics[f"{name}/iou"])} if name in IOU_GROUPS else {})}
                  for name in MODALITIES}
    cos = [_clean(metrics[f"tokens/cos{i}"]) for i in range(NUM_TOKENS)]
    nonempty = [_clean(metrics[f"tokens/cos{i}_nonempty"]) for i in range(NUM_TOKENS)]
    return {"split": split, "samples": samples, "modalities": modalities,
            "tokens": {"cos": cos, "mean": _clean(metrics["tokens/cos"]), "cos_nonempty": nonempty,
                       "mean_nonempty": _clean(metrics["tokens/cos_nonempty"])}}


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table: one row per modality (HDM at each threshold, MSE on the [-1, 1] output scale,
    foreground IoU), the token cosines, then the learning figures."""
    head = (f"{'modality':<10}" + "".join(f"{'HDM@' + str(t):>10}" for t in HDM_THRESHOLDS) + f"{'MSE':>10}"
            + f"{'IoU':>10}")
    lines = [f"{result['split']}: {result['samples']} samples", head, "-" * len(head)]
    for name, row in result["modalities"].items():
        cells = [row[f"hdm@{t}"] for t in HDM_THRESHOLDS] + [row["mse"], row.get("iou")]
        lines.append(f"{name:<10}" + "".join(f"{_cell(v):>10}" for v in cells))
    tokens = result["tokens"]
    lines += ["", "caption token cosine similarity (paper: every sample, an empty slot scores 0; non-empty: target "
              "slots holding a word)", f"{'':<10}" + "".join(f"{'#' + str(i + 1):>8}" for i in range(NUM_TOKENS))
              + f"{'mean':>8}"]
    for label, values, mean in (("paper", tokens["cos"], tokens["mean"]),
                                ("non-empty", tokens["cos_nonempty"], tokens["mean_nonempty"])):
        lines.append(f"{label:<10}" + "".join(f"{_cell(v, 3):>8}" for v in values) + f"{_cell(mean, 3):>8}")
    learn = result.get("learning")
    if learn:
        lines += ["", f"people: {learn['people_found']} of {learn['people_annotated']} annotated found "
                      f"({learn['people_predicted']} predicted); joint PCK@0.1 {_cell(learn['pck@0.1'], 3)}; "
                      f"caption word recall@8 {_cell(learn['word_recall@8'], 3)} (precision "
                      f"{_cell(learn['word_precision'], 3)})"]
        if "label_precision" in learn:
            lines.append(f"multi-hot labels (> 0.25): precision {_cell(learn['label_precision'], 3)}, recall "
                         f"{_cell(learn['label_recall'], 3)}")
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
    parser.add_argument("--heatmap-sizes", choices=("checkpoint", "final"), default="checkpoint",
                        help="joint and PAF target sizes to score with: those the checkpoint last trained toward "
                             "(default) or the limits of its recipe")
    parser.add_argument("--vocab", help="vocab.json for caption word recall (default: the split's own)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _sizes(extra: dict[str, Any], which: str = "checkpoint") -> TargetSizes:
    """The heatmap / PAF sizes to score with: those the checkpoint last trained toward (``checkpoint``, its
    ``target_sizes``), or the limits of its recipe (``final``); the paper's limits when it records neither."""
    saved = extra.get("target_sizes")
    if which == "checkpoint" and isinstance(saved, dict):
        radius, width = saved.get("heatmap_radius"), saved.get("paf_width")
        if all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 256 for v in (radius, width)):
            return TargetSizes.fixed(radius, width)
    train = extra.get("train_cfg")
    if isinstance(train, dict):
        try:
            return TargetSizes.fixed(*TrainConfig.from_dict(train).recipe.target_sizes().at(None))
        except (TypeError, ValueError):
            pass
    return TargetSizes()


def find_vocab(root: str | Path, split: str, path: str | None) -> Vocabulary | None:
    """``path``, else the split's own ``vocab.json`` when the store is a local folder; None when there is none."""
    if path:
        return Vocabulary.load(path)
    local = Path(str(root)) / split / VOCAB_NAME
    return Vocabulary.load(local) if local.is_file() else None


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
        vocab = find_vocab(args.shards, args.split, args.vocab)
    except (StoreError, CheckpointError, ValueError, OSError) as e:
        print(f"student eval: error: {e}", file=sys.stderr)
        return exit_code(e)
    if manifest.num_samples == 0:
        print(f"student eval: error: split {args.split!r} of store {args.shards} has no samples "
              f"({manifest.rejected} images rejected: see its rejected.jsonl)", file=sys.stderr)
        return 2
    if manifest.size != cfg.image_size:
        print(f"student eval: error: store {args.shards}/{args.split} has {manifest.size}-pixel samples but the "
              f"checkpoint expects {cfg.image_size}", file=sys.stderr)
        return 2
    sizes = _sizes(extra, args.heatmap_sizes)
    try:
        result = evaluate(model, args.shards, args.split, limit=args.limit, batch_size=args.batch_size,
                          workers=args.workers, device=args.device, sizes=sizes,
                          vocab=vocab, progress=not args.no_progress)
    except StoreError as e:
        print(f"student eval: error: {error_line(e)}", file=sys.stderr)
        return exit_code(e)
    result["checkpoint"] = str(args.checkpoint)
    result["target_sizes"] = {"heatmap_radius": sizes.radius[1], "paf_width": sizes.width[1],
                              "source": args.heatmap_sizes}
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
