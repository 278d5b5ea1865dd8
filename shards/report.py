"""``shards report``: a self-contained HTML page describing a split's active columns, with its plots as PNG files
beside it (nothing loaded from the network to view it).

Whole-split figures come from the store's own records (manifest, column.json, rejected.jsonl, vocab.json); the
figures of the targets themselves from a sample of the split: ``max_samples`` samples (default 2000), taken as
the first samples of up to ``SAMPLED_SHARDS`` shards drawn with ``seed`` (reading the start of a shard is cheap;
reading every shard of train2017 would take an hour), so the same store and seed give the same report.
"""

from __future__ import annotations

import html
import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shards.codecs import encode_jpeg
from shards.errors import parse_json
from shards.geometry import content_mask
from shards.layout import split_dir
from shards.manifest import load_manifest
from shards.reader import StoreReader, active_column_records
from shards.schema import REJECTED_NAME, VOCAB_NAME
from shards.streams import read_bytes
from shards.taxonomy import GROUPS, NUM_TOKENS, PANOPTIC_CLASSES

SAMPLED_SHARDS = 32  # shards a sample is drawn from, at most
SHEETS = 6  # contact sheets in the report
TOP = 25  # classes and words in the frequency plots
_NAMES = {c.contiguous_id: c.name for c in PANOPTIC_CLASSES}


@dataclass
class Tally:
    """The figures gathered from the sampled samples."""

    samples: int = 0
    depth_values: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # histogram of depth >> 8
    depth_ranges: list[tuple[float, float]] = field(default_factory=list)  # raw (min, max) per image
    depth_kinds: Counter = field(default_factory=Counter)
    normals_z: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # histogram of the z channel
    class_pixels: Counter = field(default_factory=Counter)
    class_images: Counter = field(default_factory=Counter)
    group_pixels: Counter = field(default_factory=Counter)
    group_images: Counter = field(default_factory=Counter)
    text_images: int = 0
    text_area: list[float] = field(default_factory=list)  # share of the image's content covered by text
    caption_counts: list[int] = field(default_factory=list)
    caption_words: list[int] = field(default_factory=list)
    token_slots: list[int] = field(default_factory=list)  # filled slots of the first NUM_TOKENS, per image
    token_words: Counter = field(default_factory=Counter)
    persons: list[int] = field(default_factory=list)
    visible_joints: list[int] = field(default_factory=list)  # per person
    columns: set[str] = field(default_factory=set)

    def add(self, s: dict[str, Any]) -> None:
        self.samples += 1
        meta = s.get("meta.json") or {}
        content = content_mask(meta, next((v.shape[:2] for v in s.values() if isinstance(v, np.ndarray)
                                            and v.ndim >= 2), (1, 1)))
        if "depth.png" in s:
            self.columns.add("depth")
            self.depth_values += np.bincount((s["depth.png"][content] >> 8).ravel(), minlength=256)
            info = s.get("depth.json") or {}
            self.depth_ranges.append((float(info.get("min", 0.0)), float(info.get("max", 0.0))))
            self.depth_kinds[str(info.get("kind", "?"))] += 1
        if "normals.png" in s:
            self.columns.add("normals")
            self.normals_z += np.bincount(s["normals.png"][..., 2][content].ravel(), minlength=256)
        for key, pixels, images, column in (("panoptic.png", self.class_pixels, self.class_images, "panoptic"),
                                            ("groups.png", self.group_pixels, self.group_images, "groups")):
            if key in s:
                self.columns.add(column)
                ids, counts = np.unique(s[key][content], return_counts=True)
                pixels.update({int(i): int(c) for i, c in zip(ids, counts)})
                images.update(int(i) for i in ids)
        if "text.png" in s:
            self.columns.add("text")
            area = float((s["text.png"][content] > 0).mean()) if content.any() else 0.0
            self.text_area.append(area)
            self.text_images += area > 0
        if "caption.json" in s:
            self.columns.add("caption")
            caps = (s["caption.json"] or {}).get("captions", [])
            self.caption_counts.append(len(caps))
            self.caption_words += [len(str(c).split()) for c in caps]
        if "tokens.json" in s:
            self.columns.add("tokens")
            tok = s["tokens.json"] or {}
            self.token_slots.append(min(len(tok.get("ids", [])), NUM_TOKENS))
            self.token_words.update(str(w) for w in tok.get("words", []))
        if "pose.json" in s:
            self.columns.add("pose")
            people = (s["pose.json"] or {}).get("persons", [])
            self.persons.append(len(people))
            self.visible_joints += [sum(1 for k in np.asarray(p.get("keypoints", []), np.float32).reshape(-1, 3)
                                        if k[2] > 0) for p in people]


def sample_plan(shards: list[tuple[str, int]], max_samples: int, seed: int) -> list[tuple[str, int]]:
    """(shard, samples to take from its start) of the sample: up to ``SAMPLED_SHARDS`` shards drawn with
    ``seed``, in store order, sharing ``max_samples`` evenly (all of a small split)."""
    total = sum(n for _, n in shards)
    if total <= max_samples:
        return list(shards)
    chosen = sorted(random.Random(seed).sample(range(len(shards)), min(len(shards), SAMPLED_SHARDS)))
    each = math.ceil(max_samples / len(chosen))
    return [(shards[i][0], min(each, shards[i][1])) for i in chosen]


def build_report(root: str | os.PathLike, split: str, out: str | os.PathLike, max_samples: int = 2000,
                 seed: int = 0, progress: bool = False) -> Path:
    """Write ``<out>/index.html``, its plots and contact sheets, and ``report.json``; returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    from shards.show import contact_sheet, load_vocab_words

    out = Path(out)
    path = split_dir(root, split)
    manifest = load_manifest(path)
    reader = StoreReader(root, split)
    plan = sample_plan([(e.name, e.count) for e in manifest.shards], max_samples, seed)
    tally, sheets = Tally(), []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(n for _, n in plan), desc=f"report {split}", unit="sample")
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    words = load_vocab_words(root, split)
    every = max(1, sum(n for _, n in plan) // SHEETS)
    try:
        for shard, take in plan:
            for i, sample in enumerate(reader.read_shard(shard)):
                if i >= take:
                    break
                tally.add(sample)
                if tally.samples % every == 1 % every and len(sheets) < SHEETS:
                    name = f"sheets/{sample['__key__']}.jpg"
                    (out / name).write_bytes(encode_jpeg(contact_sheet(sample, words), 85))
                    sheets.append(name)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    figures = _whole_split(root, split, manifest)
    plots = _plots(tally, out)
    figures["sampled"] = {"samples": tally.samples, "shards": len(plan), "seed": seed, "max_samples": max_samples}
    figures["targets"] = _target_figures(tally, words)
    (out / "report.json").write_text(json.dumps(figures, indent=1) + "\n")
    page = _html(split, figures, plots, sheets)
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def _whole_split(root: str | os.PathLike, split: str, manifest: Any) -> dict[str, Any]:
    path = split_dir(root, split)
    reasons: Counter = Counter()
    rejected = path / REJECTED_NAME
    if rejected.is_file():
        for line in read_bytes(str(rejected)).decode("utf-8", "replace").splitlines():
            try:
                reasons[str(parse_json(line.encode()).get("reason", "?"))] += 1
            except (ValueError, AttributeError):
                reasons["(unreadable line)"] += 1
    columns = []
    for column, fp in manifest.columns.items():
        records = active_column_records(root, split, column, fp)
        nbytes = sum(r.bytes for r in records.values())
        spec: dict[str, Any] = {}
        try:
            spec = parse_json(read_bytes(str(path / column / fp / "column.json"))).get("spec") or {}
        except (OSError, ValueError, AttributeError):
            pass
        columns.append({"column": column, "version": fp, "teacher": spec.get("teacher"),
                        "teacher_fingerprint": spec.get("teacher_fingerprint"), "params": spec.get("params"),
                        "bytes": nbytes, "bytes_per_sample": round(nbytes / max(1, manifest.num_samples), 1)})
    vocab_words = None
    try:
        vocab_words = len(parse_json(read_bytes(str(path / VOCAB_NAME)))["words"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {"split": split, "samples": manifest.num_samples, "shards": len(manifest.shards), "size": manifest.size,
            "rejected": manifest.rejected, "rejected_by_reason": dict(reasons.most_common()),
            "vocab_words": vocab_words, "columns": columns}


def _mean(values: list[float] | list[int]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def _target_figures(t: Tally, vocab: list[str] | None) -> dict[str, Any]:
    depth = {"kinds": dict(t.depth_kinds)} if "depth" in t.columns else None
    if depth is not None and t.depth_ranges:
        lo, hi = np.array(t.depth_ranges).T
        depth.update(raw_min_median=float(f"{np.median(lo):.4g}"), raw_max_median=float(f"{np.median(hi):.4g}"))
    n = max(t.samples, 1)
    return {
        "depth": depth,
        "panoptic_top_classes_by_pixels": {_NAMES.get(i, "void"): c for i, c in t.class_pixels.most_common(TOP)}
        if "panoptic" in t.columns else None,
        "groups_pixels": {_group(i): c for i, c in sorted(t.group_pixels.items())} if "groups" in t.columns else None,
        "text": {"images_with_text": round(t.text_images / n, 4), "mean_text_area": _mean(t.text_area)}
        if "text" in t.columns else None,
        "captions": {"per_image": _mean(t.caption_counts), "words_per_caption": _mean(t.caption_words),
                     "images_without": sum(1 for c in t.caption_counts if c == 0)} if "caption" in t.columns else None,
        "tokens": {"filled_slots_per_image": _mean(t.token_slots),
                   "empty_slot_share": round(1 - float(np.sum(t.token_slots)) / (NUM_TOKENS * n), 4),
                   "vocab_words_used": len(t.token_words), "vocab_words": len(vocab) if vocab else None,
                   "top_words": dict(t.token_words.most_common(TOP))} if "tokens" in t.columns else None,
        "pose": {"persons_per_image": _mean(t.persons), "images_with_persons": sum(1 for p in t.persons if p),
                 "visible_joints_per_person": _mean(t.visible_joints)} if "pose" in t.columns else None,
    }


def _group(i: int) -> str:
    return "unlabeled" if i == 0 else GROUPS[i - 1] if 0 < i <= len(GROUPS) else str(i)


def _plots(t: Tally, out: Path) -> dict[str, str]:
    """Draw the plots of the sampled figures; returns {section: file name}."""
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        made[name.removesuffix(".png")] = name

    def bars(ax: Any, labels: list[str], values: list[float], title: str) -> None:
        ax.barh(range(len(values)), values, color="#4477aa")
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)

    if "depth" in t.columns:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
        a.bar(np.arange(256) * 256, t.depth_values, width=256, color="#cc6677")
        a.set_title("depth.png values (letterbox content)", fontsize=9)
        lo, hi = np.array(t.depth_ranges).T if t.depth_ranges else (np.zeros(0), np.zeros(0))
        b.scatter(lo, hi, s=6, color="#cc6677")
        b.set_xlabel("raw min", fontsize=8)
        b.set_ylabel("raw max", fontsize=8)
        b.set_title("per-image raw depth range", fontsize=9)
        save(fig, "depth.png")
    if "normals" in t.columns:
        fig, a = plt.subplots(figsize=(4.5, 3))
        a.bar(np.arange(256) / 127.5 - 1, t.normals_z, width=2 / 256, color="#228833")
        a.set_title("normal z component (1 = facing the camera)", fontsize=9)
        save(fig, "normals.png")
    if "panoptic" in t.columns:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 5))
        top = [i for i, _ in t.class_pixels.most_common(TOP)]
        bars(a, [_NAMES.get(i, "void") for i in top], [t.class_pixels[i] / max(1, sum(t.class_pixels.values()))
                                                       for i in top], "panoptic classes: share of pixels")
        top = [i for i, _ in t.class_images.most_common(TOP)]
        bars(b, [_NAMES.get(i, "void") for i in top], [t.class_images[i] / max(1, t.samples) for i in top],
             "panoptic classes: share of images")
        save(fig, "panoptic.png")
    if "groups" in t.columns:
        fig, a = plt.subplots(figsize=(5, 3.2))
        ids = sorted(t.group_pixels)
        bars(a, [_group(i) for i in ids], [t.group_pixels[i] / max(1, sum(t.group_pixels.values())) for i in ids],
             "groups: share of pixels")
        save(fig, "groups.png")
    if "text" in t.columns:
        fig, a = plt.subplots(figsize=(4.5, 3))
        a.hist([100 * v for v in t.text_area if v > 0] or [0], bins=20, color="#aa3377")
        a.set_title(f"text area, % of the image ({t.text_images} of {t.samples} images have text)", fontsize=9)
        save(fig, "text.png")
    if "caption" in t.columns or "tokens" in t.columns:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        a.hist(t.caption_words or [0], bins=range(0, 31), color="#66ccee")
        a.set_title("words per caption", fontsize=9)
        words = t.token_words.most_common(TOP)
        bars(b, [w for w, _ in words], [c for _, c in words], "most frequent token words")
        save(fig, "captions.png")
    if t.persons:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
        a.hist(t.persons, bins=range(0, max(t.persons) + 2), color="#ccbb44")
        a.set_title("persons per image", fontsize=9)
        b.hist(t.visible_joints or [0], bins=range(0, 19), color="#ccbb44")
        b.set_title("visible joints per person", fontsize=9)
        save(fig, "pose.png")
    return made


def _table(rows: list[list[Any]], head: list[str]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _html(split: str, f: dict[str, Any], plots: dict[str, str], sheets: list[str]) -> str:
    t, s = f["targets"], f["sampled"]
    sections = [("Samples", f"<p>{f['samples']} samples in {f['shards']} shards, store size {f['size']} px; "
                            f"{f['rejected']} images rejected; vocabulary: {f['vocab_words'] or 'none'} words.</p>"
                            + _table([[r, n] for r, n in f["rejected_by_reason"].items()], ["rejected: reason",
                                                                                            "images"]))]
    sections.append(("Columns", _table(
        [[c["column"], c["version"][:12], c["teacher"] or "-", (c["teacher_fingerprint"] or "-")[:12],
          json.dumps(c["params"]) if c["params"] else "-", c["bytes_per_sample"]] for c in f["columns"]],
        ["column", "version", "teacher", "teacher fingerprint", "parameters", "bytes / sample"])))
    figures = {"depth": "Depth", "normals": "Normals", "panoptic": "Panoptic classes", "groups": "Groups",
               "text": "Text", "captions": "Captions and tokens", "pose": "Persons and joints"}
    notes = {"depth": t["depth"], "text": t["text"], "captions": {**(t["captions"] or {}),
                                                                  **{k: v for k, v in (t["tokens"] or {}).items()
                                                                     if k != "top_words"}},
             "pose": t["pose"]}
    for key, title in figures.items():
        if key in plots:
            note = notes.get(key)
            text = _table([[k, v] for k, v in note.items()], ["figure", "value"]) if note else ""
            sections.append((title, f'<img src="{plots[key]}" alt="{html.escape(title)}">{text}'))
    sections.append(("Samples' contact sheets", "".join(
        f'<a href="{n}"><img class="sheet" src="{n}" alt="contact sheet {html.escape(Path(n).stem)}"></a>'
        for n in sheets)))
    nav = " · ".join(f'<a href="#s{i}">{html.escape(title)}</a>' for i, (title, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(title)}</h2>{content}' for i, (title, content) in enumerate(sections))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Store report: {html.escape(split)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1050px; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; max-width: 380px; overflow-wrap: anywhere; }}
img {{ max-width: 100%; }} img.sheet {{ width: 32%; margin: .3%; }}
nav {{ font-size: 90%; margin-bottom: 1em; }}
</style></head><body>
<h1>Store report: split {html.escape(split)}</h1>
<p>Whole-split figures from the store's records; target figures from {s['samples']} sampled samples (the first
samples of {s['shards']} shards drawn with seed {s['seed']}).</p>
<nav>{nav}</nav>
{body}
</body></html>
"""
