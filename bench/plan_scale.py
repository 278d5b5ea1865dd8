"""Planning a folder source of a million images, then the same folder with 1% more: seconds, peak memory and the
shards marked for rebuild, in one run.

The listing is generated (a million ``(path, size, mtime)`` entries, as ``pipeline.sources.list_images`` returns
them; nothing is decoded or created on disk but the split's id map). Each plan runs in a fresh process, so its
peak memory (max RSS) is its own, and does what ``build-targets`` does with a folder before any teacher loads:
read the id map, number the files, cut the shards by id, digest every shard, mark the changed ones, write the id
map.
The new files of the second plan are spread through the folder's path order; they still take the next ids, so
only the shards past the old last id change. Targets: each plan under 60 s and 2 GB; the rebuild marks only the
new files' shards.

    python bench/plan_scale.py [--files 1000000] [--more 0.01] [--shard-size 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS, TARGET_GB = 60.0, 2.0


def one_plan(split: Path, files: int, extra: int, shard_size: int) -> dict:
    """Plan ``files`` generated paths plus ``extra`` new ones spread among them (run in a process of its own)."""
    sys.path.insert(0, str(ROOT))
    from pipeline.sources import FolderListing, cut_by_id, plan_folder, read_id_map, shard_digests, write_id_map

    t0 = time.perf_counter()
    listing = FolderListing(Path("/data/factory"))
    names = [f"line{i // 50_000:02d}/cam{i // 1000 % 50:02d}/frame{i:07d}.jpg" for i in range(files)]
    step = max(1, files // max(extra, 1))
    names += [f"line{(k * step) // 50_000:02d}/cam{(k * step) // 1000 % 50:02d}/frame{k * step:07d}-late.jpg"
              for k in range(extra)]
    listing.files = sorted((n, 250_000, 1_700_000_000_000_000_000) for n in names)
    del names
    listed = time.perf_counter() - t0
    old = read_id_map(split)
    plan = plan_folder(listing, old)
    names, by_shard = cut_by_id("factory", plan.records, plan.id_map.next_id, shard_size)
    count = len(names)
    digests = shard_digests(by_shard, plan.signatures)
    changed = sorted(sh for sh in by_shard if old.shards.get(sh) != digests[sh])
    plan.id_map.shards = digests
    write_id_map(split, plan.id_map)
    seconds = time.perf_counter() - t0
    return {"files": len(listing.files), "new_files": len(plan.added), "shards": count, "changed_shards": len(changed),
            "first_changed": changed[0] if changed else None, "seconds": round(seconds, 2),
            "seconds_generating_listing": round(listed, 2),
            "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
            "id_map_mb": round((split / "ids.json").stat().st_size / 2 ** 20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--more", type=float, default=0.01, help="share of new files in the second plan")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # split folder, files, extra: a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_plan(Path(args.one[0]), int(args.one[1]), int(args.one[2]), args.shard_size)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    try:
        split = work / "factory"
        split.mkdir()
        extra = int(args.files * args.more)
        runs = []
        for files, new in ((args.files, 0), (args.files, extra)):
            out = subprocess.run([sys.executable, __file__, "--shard-size", str(args.shard_size), "--one",
                                  str(split), str(files), str(new)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first, second = runs
    expected = math.ceil((args.files + extra) / args.shard_size) - args.files // args.shard_size
    print(f"{'plan':<28}{'files':>10}{'new':>8}{'shards':>8}{'changed':>9}{'seconds':>9}{'peak GB':>9}{'ids MB':>8}")
    for name, r in (("first (no id map yet)", first), (f"rerun, {args.more:.0%} more files", second)):
        print(f"{name:<28}{r['files']:>10}{r['new_files']:>8}{r['shards']:>8}{r['changed_shards']:>9}"
              f"{r['seconds']:>9.2f}{r['peak_gb']:>9.3f}{r['id_map_mb']:>8.1f}")
    print(f"the rerun marks {second['changed_shards']} shard(s) from {second['first_changed']}; the new files fill "
          f"{expected} (the old last shard, if partial, and the new ones)")
    print(json.dumps({"files": args.files, "more": args.more, "shard_size": args.shard_size,
                      "first_seconds": first["seconds"], "first_peak_gb": first["peak_gb"],
                      "rerun_seconds": second["seconds"], "rerun_peak_gb": second["peak_gb"],
                      "rerun_changed_shards": second["changed_shards"], "rerun_expected_shards": expected,
                      "only_new_shards": second["changed_shards"] == expected,
                      "target_seconds": TARGET_SECONDS, "target_peak_gb": TARGET_GB}))


if __name__ == "__main__":
    main()
