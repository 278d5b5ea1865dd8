"""``pipeline diff``: how two versions of one column of a split differ, sample by sample, with the measure that fits
each target, and a contact sheet of the samples that changed most.

- depth: AbsRel and delta < 1.25 after per-image median scaling (relative depth is known up to scale), on the
  letterbox content, and the angle between the normals the two depths give (the Sobel normals of DESIGN 5.2);
- normals: the angle between the two normal maps;
- panoptic / groups: pixel agreement, per-class IoU and the largest flows (class a in one version, b in the other);
- text: mask IoU and the change in the polygon count;
- caption / tokens: Jaccard of the word (token word) sets and the number of samples whose captions (tokens)
  changed.

Both versions must be of the same stage and hold the split's shards as its manifest plans them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from shards.geometry import content_mask
from shards.layout import split_dir
from shards.manifest import StoreError, load_manifest
from shards.reader import StoreReader
from shards.schema import COLUMN_RECORD_NAME, COLUMNS, FINGERPRINT_RE
from shards.taxonomy import GROUPS, PANOPTIC_CLASSES, PANOPTIC_VOID

#: columns ``pipeline diff`` compares, and the members it reads of each
DIFFABLE = ("pose", "depth", "normals", "panoptic", "groups", "text", "caption", "tokens")
TOP_FLOWS = 8  # confusion flows listed
EPS = 1e-6


class DiffError(ValueError):
    """Versions that cannot be compared (unknown, of another stage, another shard plan); one line."""


@dataclass
class VersionPair:
    stage: str
    old: str
    new: str


def versions_on_disk(split_path: Path, stage: str) -> list[tuple[str, float]]:
    """(fingerprint, mtime of its column.json) of every version folder of ``stage``, newest first."""
    folder = split_path / stage
    found = []
    if folder.is_dir():
        for entry in folder.iterdir():
            record = entry / COLUMN_RECORD_NAME
            if FINGERPRINT_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink() \
                    and record.is_file():
                found.append((entry.name, record.stat().st_mtime))
    return sorted(found, key=lambda v: -v[1])


def resolve_versions(root: str | os.PathLike, split: str, stage: str, old: str | None = None,
                     new: str | None = None) -> VersionPair:
    """The two versions to compare: ``new`` defaults to the active one, ``old`` to the newest other version on
    disk; each may be given as a unique prefix (at least 6 hex digits)."""
    if stage not in DIFFABLE:
        raise DiffError(f"stage {stage!r} cannot be diffed; stages: {', '.join(DIFFABLE)}")
    split_path = split_dir(root, split)
    try:
        manifest = load_manifest(split_path)
    except StoreError as e:
        raise DiffError(str(e)) from None
    on_disk = [fp for fp, _ in versions_on_disk(split_path, stage)]
    listing = ", ".join(fp[:12] for fp in on_disk) or "none"

    def pick(prefix: str, which: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{6,64}", prefix):
            raise DiffError(f"--{which} {prefix!r}: give a version fingerprint (at least 6 hex digits)")
        hits = [fp for fp in on_disk if fp.startswith(prefix)]
        if len(hits) != 1:
            others = [c for c in COLUMNS if c != stage and any(
                fp.startswith(prefix) for fp, _ in versions_on_disk(split_path, c))]
            where = f"; it is a version of {others[0]}, not of {stage}" if others else ""
            raise DiffError(f"--{which} {prefix}: {'no' if not hits else 'more than one'} version of {stage} of "
                            f"{split} matches{where} (versions on disk: {listing})")
        return hits[0]

    new_fp = pick(new, "to") if new else manifest.columns.get(stage)
    if new_fp is None:
        raise DiffError(f"{stage} has no active version in {split}; pass --to (versions on disk: {listing})")
    if old:
        old_fp = pick(old, "from")
    else:
        rest = [fp for fp in on_disk if fp != new_fp]
        if not rest:
            raise DiffError(f"{stage} of {split} has one version on disk ({new_fp[:12]}): nothing to compare it "
                            "with (an earlier version is kept until `shards gc` removes it)")
        old_fp = rest[0]
    return VersionPair(stage, old_fp, new_fp)


# ---- per-sample measures -------------------------------------------------------------------------------------
def _raw_depth(png: np.ndarray, info: Mapping[str, Any] | None) -> np.ndarray:
    """The teacher's raw values of a ``depth.png`` (a depth.json without them: the 16-bit levels over 0..1)."""
    from pipeline.targets.depth import DEPTH_MAX, recover_depth

    return recover_depth(png, {"min": 0.0, "scale": 1.0 / DEPTH_MAX, **(info or {})})


def _normals(depth_png: np.ndarray, meta: Mapping[str, Any] | None) -> np.ndarray:
    from pipeline.samples import normals_sample

    return normals_sample(depth_png, meta=meta)["normals.png"]


def _angle(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean angle in degrees between two uint8 normal maps (round((n + 1) * 127.5)) over ``mask``."""
    va = a[mask].astype(np.float64) / 127.5 - 1.0
    vb = b[mask].astype(np.float64) / 127.5 - 1.0
    if not len(va):
        return 0.0
    cos = (va * vb).sum(1) / np.maximum(np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1), EPS)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


def depth_measures(old: Mapping[str, Any], new: Mapping[str, Any], meta: Mapping[str, Any] | None) -> dict:
    mask = content_mask(meta, old["depth.png"].shape)
    a, b = _raw_depth(old["depth.png"], old.get("depth.json"))[mask], _raw_depth(new["depth.png"],
                                                                                 new.get("depth.json"))[mask]
    ok = (a > 0) & (b > 0)  # median scaling needs positive depth (a model's raw values may be tiny, never < 0 here)
    if not ok.any():  # no positive pixel in common: agreement only where the two are the same
        same = bool(np.array_equal(a, b))
        absrel, delta = (0.0, 1.0) if same else (1.0, 0.0)
    else:
        a, b = a[ok], b[ok]
        b = b * (np.median(a) / np.median(b))
        absrel = float((np.abs(b - a) / a).mean())
        delta = float((np.maximum(a / b, b / a) < 1.25).mean())
    angle = _angle(_normals(old["depth.png"], meta), _normals(new["depth.png"], meta), mask)
    return {"absrel": absrel, "delta1": delta, "normals_angle_deg": angle, "change": absrel}


def normals_measures(old: Mapping[str, Any], new: Mapping[str, Any], meta: Mapping[str, Any] | None) -> dict:
    angle = _angle(old["normals.png"], new["normals.png"], content_mask(meta, old["normals.png"].shape))
    return {"angle_deg": angle, "change": angle / 180.0}


def label_measures(key: str, old: Mapping[str, Any], new: Mapping[str, Any], meta: Mapping[str, Any] | None
                   ) -> tuple[dict, np.ndarray]:
    """Pixel agreement of two label maps, and their joint histogram (old x new, 256 x 256) for IoU and flows."""
    mask = content_mask(meta, old[key].shape)
    a, b = old[key][mask].astype(np.int64), new[key][mask].astype(np.int64)
    joint = np.bincount(a * 256 + b, minlength=256 * 256).reshape(256, 256)
    agree = float(np.trace(joint) / max(joint.sum(), 1))
    return {"pixel_agreement": agree, "change": 1.0 - agree}, joint


def text_measures(old: Mapping[str, Any], new: Mapping[str, Any], meta: Mapping[str, Any] | None) -> dict:
    a, b = old["text.png"] > 0, new["text.png"] > 0
    union = int((a | b).sum())
    iou = 1.0 if union == 0 else float((a & b).sum() / union)
    count = [len((s.get("text.json") or {}).get("polygons", [])) for s in (old, new)]
    return {"mask_iou": iou, "polygons_old": count[0], "polygons_new": count[1],
            "polygon_change": count[1] - count[0], "change": 1.0 - iou}


#: a joint of one version agrees with the other's when within this fraction of the store size (and seen in both)
JOINT_TOLERANCE = 0.02


def _persons(pose: Mapping[str, Any] | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The joints (17, 3) and boxes [x, y, w, h] of a pose.json's persons."""
    persons = (pose or {}).get("persons", [])
    return ([np.asarray(p["keypoints"], np.float64).reshape(-1, 3) for p in persons],
            [np.asarray(p["bbox"], np.float64) for p in persons])


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [x, y, w, h] boxes (0 when they do not overlap or have no area)."""
    inter = np.prod(np.clip(np.minimum(a[:2] + a[2:], b[:2] + b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    union = float(np.prod(a[2:]) + np.prod(b[2:]) - inter)
    return float(inter) / union if union > 0 else 0.0


def pose_measures(old: Mapping[str, Any], new: Mapping[str, Any], meta: Mapping[str, Any] | None) -> dict:
    """Persons of both versions matched greedily by the overlap of their boxes; a joint agrees when both see it
    within ``JOINT_TOLERANCE`` of the store size; agreement = agreeing joints / joints seen by either."""
    (a, boxes_a), (b, boxes_b) = _persons(old.get("pose.json")), _persons(new.get("pose.json"))
    size = float((meta or {}).get("size") or 256)
    pairs = sorted(((_box_iou(p, q), i, j) for i, p in enumerate(boxes_a) for j, q in enumerate(boxes_b)),
                   reverse=True)
    used_a: set[int] = set()
    used_b: set[int] = set()
    agree, distances = 0, []
    for iou, i, j in pairs:
        if iou <= 0 or i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        both = (a[i][:, 2] > 0) & (b[j][:, 2] > 0)
        d = np.hypot(*(a[i][both, :2] - b[j][both, :2]).T)
        distances += d.tolist()
        agree += int((d <= JOINT_TOLERANCE * size).sum())
    seen = sum(int(p[:, 2].astype(bool).sum()) for p in a) + sum(int(q[:, 2].astype(bool).sum()) for q in b)
    union = seen - agree  # a joint both versions agree on is counted once
    agreement = 1.0 if union == 0 else agree / union
    return {"persons_old": len(a), "persons_new": len(b), "matched": len(used_a), "joint_agreement": agreement,
            **({"joint_px": float(np.mean(distances))} if distances else {}), "change": 1.0 - agreement}


def _words(captions: Any) -> set[str]:
    return {w for c in captions or [] for w in re.findall(r"[a-z0-9']+", str(c).lower())}


def caption_measures(old: Mapping[str, Any], new: Mapping[str, Any], meta: Any = None) -> dict:
    a, b = [(s.get("caption.json") or {}).get("captions", []) for s in (old, new)]
    wa, wb = _words(a), _words(b)
    jac = 1.0 if not (wa | wb) else len(wa & wb) / len(wa | wb)
    return {"word_jaccard": jac, "changed": a != b, "change": 1.0 - jac}


def tokens_measures(old: Mapping[str, Any], new: Mapping[str, Any], meta: Any = None) -> dict:
    # the words, where stored: ids of two versions may index two vocabularies (train's, rebuilt from new captions)
    a, b = [list((s.get("tokens.json") or {}).get("words", (s.get("tokens.json") or {}).get("ids", [])))
            for s in (old, new)]
    sa, sb = set(a), set(b)
    jac = 1.0 if not (sa | sb) else len(sa & sb) / len(sa | sb)
    return {"token_jaccard": jac, "changed": a != b, "change": 1.0 - jac}


# ---- the whole diff ------------------------------------------------------------------------------------------
@dataclass
class Diff:
    """The result: per-sample measures, overall figures and the samples that changed most."""

    split: str
    pair: VersionPair
    samples: list[dict[str, Any]] = field(default_factory=list)  # {"key", measures...}
    overall: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "stage": self.pair.stage, "from": self.pair.old, "to": self.pair.new,
                "overall": self.overall, "samples": self.samples}


def _pairs(root: str | os.PathLike, split: str, pair: VersionPair, columns: list[str],
           plan: list[tuple[str, int]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The samples of both versions side by side (the other columns read once, from the first), the first
    ``take`` samples of each ``(shard, take)`` of ``plan``."""
    old = StoreReader(root, split, columns, versions={pair.stage: pair.old}, rank=0, world_size=1)
    new = StoreReader(root, split, [pair.stage], versions={pair.stage: pair.new}, rank=0, world_size=1)
    for shard, take in plan:
        for i, (a, b) in enumerate(zip(old.read_shard(shard), new.read_shard(shard), strict=True)):
            if i >= take:
                break
            if a["__key__"] != b["__key__"]:
                raise DiffError(f"the two versions hold different samples ({a['__key__']} vs {b['__key__']})")
            yield a, b


def diff_versions(root: str | os.PathLike, split: str, pair: VersionPair, top: int = 8, progress: bool = False,
                  max_samples: int = 0, seed: int = 0) -> tuple[Diff, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Compare the two versions over every sample (or ``max_samples`` of them, drawn as ``shards report`` draws:
    the first samples of up to 32 seeded shards); returns the diff and the ``top`` most changed sample pairs (old
    with the base column, new), for the contact sheet."""
    from shards.report import sample_plan

    stage = pair.stage
    columns = ["base", stage]  # the image beside every target, and its letterbox
    diff = Diff(split, pair)
    label_key = {"panoptic": "panoptic.png", "groups": "groups.png"}.get(stage)
    joint = np.zeros((256, 256), np.int64)
    worst: list[tuple[float, str, dict, dict]] = []
    shards = [(e.name, e.count) for e in load_manifest(split_dir(root, split)).shards]
    plan = sample_plan(shards, max_samples, seed) if max_samples > 0 else shards
    total = sum(n for _, n in plan)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"diff {stage}", unit="sample")
    try:
        for a, b in _pairs(root, split, pair, columns, plan):
            meta = a.get("meta.json")
            if label_key:
                m, j = label_measures(label_key, a, b, meta)
                joint += j
            else:
                m = _MEASURES[stage](a, b, meta)
            diff.samples.append({"key": a["__key__"], **{k: _round(v) for k, v in m.items()}})
            worst.append((m["change"], a["__key__"], a, b))
            worst = sorted(worst, key=lambda w: (-w[0], w[1]))[:top]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    diff.overall = _overall(stage, diff.samples, joint if label_key else None)
    if max_samples > 0:
        diff.overall["sampled"] = {"max_samples": max_samples, "seed": seed, "shards": len(plan)}
    return diff, [(a, b) for change, _, a, b in worst if change > 0]


_MEASURES = {"pose": pose_measures, "depth": depth_measures, "normals": normals_measures, "text": text_measures,
             "caption": caption_measures, "tokens": tokens_measures}


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def _mean(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if key in s]
    return round(float(np.mean(values)), 6) if values else None


def _overall(stage: str, samples: list[dict[str, Any]], joint: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": len(samples), "unchanged": sum(1 for s in samples if s["change"] == 0)}
    if stage == "depth":
        out.update(absrel=_mean(samples, "absrel"), delta1=_mean(samples, "delta1"),
                   normals_angle_deg=_mean(samples, "normals_angle_deg"))
    elif stage == "normals":
        out.update(angle_deg=_mean(samples, "angle_deg"))
    elif stage == "text":
        out.update(mask_iou=_mean(samples, "mask_iou"),
                   polygons_old=sum(s["polygons_old"] for s in samples),
                   polygons_new=sum(s["polygons_new"] for s in samples))
    elif stage == "pose":
        out.update(joint_agreement=_mean(samples, "joint_agreement"), joint_px=_mean(samples, "joint_px"),
                   persons_old=sum(s["persons_old"] for s in samples),
                   persons_new=sum(s["persons_new"] for s in samples))
    elif stage in ("caption", "tokens"):
        key = "word_jaccard" if stage == "caption" else "token_jaccard"
        out.update({key: _mean(samples, key), "changed": sum(1 for s in samples if s["changed"])})
    if joint is not None:
        names = ({c.contiguous_id: c.name for c in PANOPTIC_CLASSES} | {PANOPTIC_VOID: "void"} if stage == "panoptic"
                 else {0: "unlabeled", **{i + 1: g for i, g in enumerate(GROUPS)}})
        pixels = int(joint.sum())
        out["pixel_agreement"] = round(float(np.trace(joint) / max(pixels, 1)), 6)
        ious = {}
        for c in np.flatnonzero(joint.sum(0) + joint.sum(1)):
            inter, union = joint[c, c], joint[c, :].sum() + joint[:, c].sum() - joint[c, c]
            ious[names.get(int(c), str(int(c)))] = round(float(inter / union), 6)
        out["iou"] = dict(sorted(ious.items(), key=lambda kv: kv[1]))
        off = joint.copy()
        np.fill_diagonal(off, 0)
        flows = []
        for flat in np.argsort(-off, axis=None)[:TOP_FLOWS]:
            a, b = divmod(int(flat), 256)
            if off[a, b] == 0:
                break
            flows.append({"from": names.get(a, str(a)), "to": names.get(b, str(b)), "pixels": int(off[a, b]),
                          "share": round(float(off[a, b] / max(pixels, 1)), 6)})
        out["flows"] = flows
    return out


def summary_lines(diff: Diff) -> list[str]:
    """The terminal table of a diff."""
    o, p = diff.overall, diff.pair
    lines = [f"{p.stage} of {diff.split}: {p.old[:12]} -> {p.new[:12]}, {o['samples']} samples, "
             f"{o['unchanged']} unchanged" + (f" (sampled from {o['sampled']['shards']} shards)" if "sampled" in o
                                              else "")]
    rows = [(k, v) for k, v in o.items() if k not in ("samples", "unchanged", "iou", "flows", "sampled")]
    lines += [f"  {k:<22}{v:>12.4f}" if isinstance(v, float) else f"  {k:<22}{v!s:>12}" for k, v in rows]
    if "iou" in o:
        lines.append("  lowest IoU:   " + ", ".join(f"{k} {v:.3f}" for k, v in list(o["iou"].items())[:6]))
        for f in o["flows"][:5]:
            lines.append(f"  {f['from']} -> {f['to']}: {100 * f['share']:.2f}% of the pixels")
    return lines


def diff_sheet(stage: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> np.ndarray | None:
    """Rows of image | old | new | difference for the most changed samples (None when nothing changed)."""
    import cv2

    from shards.show import TILE_MIN, column_tile

    if not pairs:
        return None
    size = max(next((v.shape[0] for v in pairs[0][0].values() if isinstance(v, np.ndarray) and v.ndim >= 2),
                    TILE_MIN), TILE_MIN)
    rows = [np.hstack([column_tile(a, "base", size), column_tile(a, stage, size, f"old {a['__key__']}"),
                       column_tile({**a, **b}, stage, size, "new"), _difference_tile(stage, a, b, size)])
            for a, b in pairs]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    band = np.full((28, width, 3), 24, np.uint8)
    cv2.putText(band, f"{stage}, the {len(rows)} most changed samples: image | old | new | difference", (8, 19),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
    return np.vstack([band, *rows])


def _difference_tile(stage: str, a: dict[str, Any], b: dict[str, Any], size: int) -> np.ndarray:
    import cv2

    from shards.show import label_tile

    key = {"depth": "depth.png", "normals": "normals.png", "panoptic": "panoptic.png", "groups": "groups.png",
           "text": "text.png"}.get(stage)
    if stage == "pose":
        from shards.show import lines_tile

        m = pose_measures(a, b, a.get("meta.json"))
        return lines_tile([f"persons: {m['persons_old']} -> {m['persons_new']} ({m['matched']} matched)",
                           f"joints agreeing: {100 * m['joint_agreement']:.0f}%"]
                          + ([f"mean joint shift: {m['joint_px']:.1f} px"] if "joint_px" in m else []), size,
                          "persons and joints")
    if key is None:  # captions and tokens: the words that came and went
        wa, wb = (_words((s.get("caption.json") or {}).get("captions")) if stage == "caption"
                  else {str(w) for w in (s.get("tokens.json") or {}).get("words", [])} for s in (a, b))
        from shards.show import lines_tile

        return lines_tile(["added: " + (" ".join(sorted(wb - wa)) or "-"), "removed: " + (" ".join(sorted(wa - wb))
                                                                                      or "-")], size,
                          "words added / removed")
    x, y = a[key], b[key]
    if stage == "depth":
        mag = np.abs(_raw_depth(x, a.get("depth.json")) - _raw_depth(y, b.get("depth.json")))
        mag = (255 * mag / max(float(mag.max()), EPS)).astype(np.uint8)
        img = cv2.applyColorMap(mag, cv2.COLORMAP_INFERNO)[..., ::-1].copy()
        text = "|old - new| (raw depth)"
    else:
        changed = (x != y).any(-1) if x.ndim == 3 else x != y
        img = np.zeros(x.shape[:2] + (3,), np.uint8)
        img[changed] = (255, 64, 64)
        text = f"changed pixels ({100 * changed.mean():.1f}%)"
    return label_tile(img, size, text)


def write_diff(diff: Diff, sheet: np.ndarray | None, out: str | os.PathLike) -> dict[str, str]:
    """Write ``diff.json`` and ``diff-sheet.png`` into the folder ``out``; returns their paths."""
    from shards.codecs import encode_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "diff.json")}
    (out / "diff.json").write_text(json.dumps(diff.to_json(), indent=1) + "\n")
    if sheet is not None:
        (out / "diff-sheet.png").write_bytes(encode_png(sheet))
        paths["sheet"] = str(out / "diff-sheet.png")
    return paths
