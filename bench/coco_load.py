"""Reading a train2017-sized split's annotations: ``pipeline.coco.load_split`` next to parsing the same three
files with the standard library's ``json`` alone, in one run.

Every ``build-targets`` and ``pipeline status`` starts with ``load_split``. The files are synthetic, with
COCO train2017's counts (118287 images, 860001 instance annotations with polygons, 262465 person annotations
with keypoints, 591753 captions) and sizes near the real ones. Each reader runs in a fresh process, so the
peak memory figures are its own. Target: the whole reader (parsing, indexing, building the records) takes no
longer than ``json.load`` of the three files.

    python bench/coco_load.py [--images 118287] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.0
KINDS = ("instances", "person_keypoints", "captions")


def make_annotations(root: Path, n: int) -> None:
    """COCO-format annotation files of ``n`` images with train2017's annotation counts per image."""
    rng = random.Random(0)
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    images = ",".join(json.dumps({"license": 1, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640,
                                  "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
                                  "date_captured": "2013-11-14 11:18:45", "id": i}) for i in range(1, n + 1))
    # polygons and keypoints come from pools of distinct strings: what is parsed is realistic, generating is fast
    polygons = [json.dumps([[round(rng.uniform(0, 640), 2) for _ in range(2 * rng.randint(6, 40))]])
                for _ in range(4000)]
    keypoints = [json.dumps([v for _ in range(17) for v in (rng.randint(0, 640), rng.randint(0, 480),
                                                               rng.choice((0, 1, 2)))]) for _ in range(4000)]
    person = json.dumps([{"supercategory": "person", "id": 1, "name": "person", "keypoints": ["nose"] * 17,
                          "skeleton": [[16, 14]]}])
    things = json.dumps([{"supercategory": "thing", "id": i, "name": f"class{i}"} for i in range(1, 91)])

    def instance(aid: int) -> str:
        return (f'{{"segmentation": {rng.choice(polygons)}, "area": 1035.5, "iscrowd": 0, '
                f'"image_id": {rng.randint(1, n)}, "bbox": [73.4, 41.9, 32.5, 60.1], '
                f'"category_id": {rng.randint(1, 90)}, "id": {aid}}}')

    def keypoint(aid: int) -> str:
        return (f'{{"segmentation": {rng.choice(polygons)}, "num_keypoints": 11, "area": 1035.5, "iscrowd": 0, '
                f'"keypoints": {rng.choice(keypoints)}, "image_id": {rng.randint(1, n)}, '
                f'"bbox": [73.4, 41.9, 32.5, 60.1], "category_id": 1, "id": {aid}}}')

    def caption(aid: int) -> str:
        return (f'{{"image_id": {(aid - 1) // 5 + 1}, "id": {aid}, '
                '"caption": "A man riding a wave on top of a surfboard."}')

    for kind, make, count, cats in (("instances", instance, round(n * 7.27), things),
                                    ("person_keypoints", keypoint, round(n * 2.22), person),
                                    ("captions", caption, 5 * n, None)):
        with open(root / "annotations" / f"{kind}_train2017.json", "w") as f:
            f.write(f'{{"info": {{}}, "licenses": [], "images": [{images}], "annotations": [')
            f.write(",".join(make(aid) for aid in range(1, count + 1)))
            f.write("]" + (f', "categories": {cats}}}' if cats else "}"))


_STDLIB = """
import json, resource, sys, time
t = time.perf_counter()
for kind in {kinds!r}:
    with open(f"{root}/annotations/{{kind}}_train2017.json", encoding="utf-8") as f:
        data = json.load(f)
    del data
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

_READER = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from pipeline.coco import load_split
t = time.perf_counter()
records = load_split({root!r}, "train2017")
assert len(records) == {n}
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(code: str) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of ``code`` run in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    return float(out[-2]), int(out[-1]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118287)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are reported")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-coco-"))
    try:
        make_annotations(work, args.images)
        megabytes = {k: (work / "annotations" / f"{k}_train2017.json").stat().st_size / 1e6 for k in KINDS}
        stdlib, reader = [], []
        for _ in range(args.rounds):
            stdlib.append(run(_STDLIB.format(kinds=KINDS, root=work)))
            reader.append(run(_READER.format(repo=str(ROOT), root=str(work), n=args.images)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    json_s, json_gb = (statistics.median(c) for c in zip(*stdlib))
    load_s, load_gb = (statistics.median(c) for c in zip(*reader))
    print("annotation files: " + ", ".join(f"{k} {mb:.0f} MB" for k, mb in megabytes.items()))
    print(f"{'run':<40}{'seconds':>10}{'peak GB':>10}")
    print(f"{'json.load of the three files':<40}{json_s:>10.1f}{json_gb:>10.2f}")
    print(f"{'load_split (records of every image)':<40}{load_s:>10.1f}{load_gb:>10.2f}")
    print(json.dumps({"images": args.images, "rounds": args.rounds, "json_load_s": round(json_s, 2),
                      "load_split_s": round(load_s, 2), "json_load_peak_gb": round(json_gb, 2),
                      "load_split_peak_gb": round(load_gb, 2), "load_split_vs_json_load": round(load_s / json_s, 2),
                      "target_load_split_vs_json_load": TARGET}))


if __name__ == "__main__":
    main()
