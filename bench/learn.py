"""Proof that the chain learns: train the `small` student on the demo train split on CPU, then score it there.

Builds the demo COCO root and its train2017 store (ground-truth panoptic, captions and keypoints: the generated
stick-figure scenes give exact joints; real RapidOCR text; depth from a tiny random Depth Anything V2, so depth
and normals are noise, and the recipe gives them no weight), trains `student train --model small --recipe
bench/learn_recipe.json` with augmentation on for at most --minutes, then runs `student eval` and `student
predict` on the TRAINING images. Overfitting them is the point: it proves that targets, loader, augmentation,
loss, model, post-processing and decoding agree. Everything goes through the command lines a user has.

Prints a table (the same figures after one training step, as the baseline), then one JSON line with the figures
and their targets (people found, joint PCK@0.1 after skeleton grouping, groups mean IoU, caption word
recall@8). Options: --minutes, --size, --out, --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPE = ROOT / "bench" / "learn_recipe.json"
TARGETS = {"pck@0.1": 0.5, "groups_miou": 0.5, "word_recall@8": 0.5}
PANEL_IMAGE = "000000001000.jpg"  # the park scene: two people, trees, grass


def _run(argv: list[str], log: Path) -> str:
    """Run one command line, its stderr into ``log``; its stdout back. A failure stops the benchmark."""
    with open(log, "a") as err:
        err.write(f"$ {' '.join(argv)}\n")
        err.flush()
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        sys.exit(f"bench/learn.py: `{' '.join(argv[:2])}` failed (exit {done.returncode}); see {log}")
    return done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=8.0, help="training time (default 8: the whole bench "
                                                                 "stays within 10 minutes on 2 cores)")
    p.add_argument("--size", type=int, default=96, help="store size in pixels (default 96)")
    p.add_argument("--out", help="work folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = p.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="learn-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench-learn.log"
    demo, store, run = work / "demo", work / "shards", work / "run"
    start = time.perf_counter()

    _run([str(BIN / "pipeline"), "make-demo", "--out", str(demo)], log)
    depth_ckpt = _run([sys.executable, "-c", "from teachers.tiny import save_tiny_checkpoint; "
                       f"print(save_tiny_checkpoint('depth-anything-v2', '{demo}/checkpoints/depth-anything-v2'))"],
                      log).strip()
    _run([str(BIN / "pipeline"), "build-targets", "--executor", "local", "--coco-root", str(demo), "--out", str(store),
          "--split", "train2017", "--size", str(args.size), "--shard-size", "16", "--device", "cpu",
          "--depth-teacher", "depth-anything-v2", "--depth-checkpoint", depth_ckpt, "--panoptic-teacher",
          "panoptic-gt", "--text-teacher", "rapidocr", "--caption-teacher", "caption-gt",
          "--glove", str(demo / "glove" / "glove.demo.300d.txt")], log)

    def train(out: Path, *limit: str) -> dict:
        return json.loads(_run([
            str(BIN / "student"), "train", "--shards", str(store), "--val-split", "train2017", "--model", "small",
            "--recipe", str(RECIPE), "--steps-per-epoch", "50", *limit, "--workers", "0", "--device", "cpu",
            "--no-progress", "--out", str(out), "--overwrite"], log).strip().splitlines()[-1])

    def evaluate(checkpoint: Path, name: str) -> dict:
        _run([str(BIN / "student"), "eval", "--checkpoint", str(checkpoint), "--shards", str(store), "--split",
              "train2017", "--json", str(work / name), "--no-progress"], log)
        return json.loads((work / name).read_text())

    baseline = evaluate(Path(train(work / "run-1-step", "--max-steps", "1")["checkpoint"]), "eval-1-step.json")
    trained_at = time.perf_counter()
    trained = train(run, "--max-minutes", str(args.minutes))
    train_s = time.perf_counter() - trained_at
    checkpoint = run / "last.pt"
    scores = evaluate(checkpoint, "eval.json")
    rejected = {json.loads(line)["file_name"] for line in
                (store / "train2017" / "rejected.jsonl").read_text().splitlines() if line.strip()}
    images = sorted(p for p in (demo / "train2017").iterdir()  # the training images: the samples of the store
                    if p.suffix in (".jpg", ".png") and p.name not in rejected)
    _run([str(BIN / "student"), "predict", "--checkpoint", str(checkpoint), *map(str, images), "--out",
          str(work / "predictions"), "--vocab", str(store / "train2017" / "vocab.json"), "--json"], log)
    total_s = time.perf_counter() - start

    learn = scores["learning"]
    figures = {"people_found": learn["people_found"], "people_annotated": learn["people_annotated"],
               "pck@0.1": learn["pck@0.1"], "groups_miou": scores["modalities"]["groups"]["iou"],
               "word_recall@8": learn["word_recall@8"], "text_iou": scores["modalities"]["text"]["iou"],
               "joints_iou": scores["modalities"]["joints"]["iou"], "steps": trained["steps"],
               "epochs": trained["epochs"], "train_minutes": round(train_s / 60, 2),
               "total_minutes": round(total_s / 60, 2), "train_loss": trained["train_loss"]}
    print(f"train2017 of the demo at {args.size} px: {scores['samples']} images, `small` model, "
          f"{trained['steps']} steps ({trained['epochs']} epochs) in {train_s / 60:.1f} min; whole bench "
          f"{total_s / 60:.1f} min")
    print(f"{'figure':<26}{'after 1 step':>14}{'trained':>10}{'target':>8}")
    for name, key in (("people found", None), ("joint PCK@0.1", "pck@0.1"), ("groups mean IoU", "groups_miou"),
                      ("caption word recall@8", "word_recall@8"), ("text IoU", None), ("joints foreground IoU", None)):
        cells = []
        for result in (baseline, scores):
            learned = result["learning"]
            value = {"people found": f"{learned['people_found']}/{learned['people_annotated']}",
                     "joint PCK@0.1": learned["pck@0.1"], "groups mean IoU": result["modalities"]["groups"]["iou"],
                     "caption word recall@8": learned["word_recall@8"],
                     "text IoU": result["modalities"]["text"]["iou"],
                     "joints foreground IoU": result["modalities"]["joints"]["iou"]}[name]
            cells.append(value if isinstance(value, str) else "-" if value is None else f"{value:.3f}")
        print(f"{name:<26}{cells[0]:>14}{cells[1]:>10}{TARGETS[key] if key else '':>8}")
    panel = work / "predictions" / PANEL_IMAGE.replace(".jpg", ".panel.png")
    print(f"panel of {PANEL_IMAGE}: {panel}" + ("" if args.keep or args.out else " (removed with the work folder; "
                                                "pass --keep)"))
    for name, target in TARGETS.items():
        figures[f"target_{name}"] = target
        figures[f"{name}_vs_target"] = None if figures[name] is None else round(figures[name] / target, 3)
    print(json.dumps(figures))
    if not (args.keep or args.out):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
