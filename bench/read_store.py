"""Read speed of the store: joined reader vs. bare codec floor vs. stock webdataset, per core, one run.

Builds a synthetic store of realistic SxS samples (every column), then measures on the same shards:
  reader      StoreReader over all columns with full decode (tar parsing, key join, decode)
  floor       the same members decoded with bare codec calls in a tight loop over pre-read bytes, member
              kind by member kind (all JPEGs, then all depth PNGs, ...: the fastest order, since one
              codec's code and tables stay hot; the reader decodes 64 samples at a time the same way);
              the same loop in sample order is printed for information
  webdataset  stock ``webdataset.WebDataset(url).decode("rgb8")`` over each column, zipped by sample
Rates are samples per CPU second of this single-threaded process (= per core), best of ``--repeats``
rounds; each round runs every path once, so load from other processes hits all of them alike.
Ends with one JSON line of the figures and target ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from shards.codecs import DECODERS
from shards.layout import column_dir, shard_path
from shards.reader import StoreReader
from shards.schema import COLUMNS
from shards.streams import iter_samples
from shards.synthetic import write_synthetic_store

SPLIT = "bench"
TARGET_VS_FLOOR = 0.8
TARGET_VS_WEBDATASET = 3.0


def _cpu_rate(fn: Callable[[], int]) -> float:
    """Samples per CPU second of one call of ``fn`` (which returns how many samples it handled)."""
    t = time.process_time()
    n = fn()
    return n / max(time.process_time() - t, 1e-9)


def _shard_files(root: Path) -> dict[str, list[Path]]:
    m = StoreReader(root, SPLIT).manifest
    return {c: [shard_path(column_dir(root / SPLIT, c, fp), s) for s in m.shard_names] for c, fp in m.columns.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--root", type=Path, default=None, help="build the store here (default: a temporary dir)")
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = a.root or Path(tmp)
        t = time.perf_counter()
        write_synthetic_store(root, SPLIT, a.samples, a.shard_size, size=a.size, seed=0)
        print(f"built {a.samples} samples of {a.size}x{a.size} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        files = _shard_files(root)
        per_sample = {c: sum(f.stat().st_size for f in fs) / a.samples for c, fs in files.items()}

        def reader() -> int:
            return sum(1 for _ in StoreReader(root, SPLIT))

        # floor: every member's bytes pre-read into memory, then only the codec calls
        decoders = {m.ext: DECODERS[m.codec] for c in COLUMNS.values() for m in c.members}
        columns = []
        for fs in files.values():
            samples = []
            for f in fs:
                with open(f, "rb") as stream:
                    samples += [ms for _, ms in iter_samples(stream)]
            columns.append(samples)
        by_sample = [(decoders[ext], data) for joined in zip(*columns) for ms in joined for ext, data in ms.items()]
        by_kind = [(decoders[ext], ms[ext]) for samples in columns for ext in samples[0] for ms in samples]

        def floor(members: list[tuple[Callable[[bytes], object], bytes]] = by_sample) -> int:
            for decode, data in members:
                decode(data)
            return a.samples

        def stock() -> int:
            import webdataset as wds

            streams = [wds.WebDataset([str(f) for f in fs], shardshuffle=False, empty_check=False).decode("rgb8")
                       for fs in files.values()]
            return sum(1 for _ in zip(*streams))

        stock()  # warm the imports
        paths = {"reader": reader, "floor": lambda: floor(by_kind), "floor_sample_order": floor,
                 "webdataset": stock}
        rates = dict.fromkeys(paths, 0.0)
        for _ in range(a.repeats):
            for name, fn in paths.items():
                rates[name] = max(rates[name], _cpu_rate(fn))

    print(f"{'column':10s} {'KiB/sample':>10s}")
    for c, b in per_sample.items():
        print(f"{c:10s} {b / 1024:10.1f}")
    print(f"\n{'path':16s} {'samples/s/core':>15s}")
    for name, r in rates.items():
        print(f"{name:16s} {r:15.1f}")
    vs_floor = rates["reader"] / rates["floor"]
    vs_wds = rates["reader"] / rates["webdataset"]
    print(f"\nreader / floor = {vs_floor:.2f} (target >= {TARGET_VS_FLOOR}); "
          f"reader / webdataset = {vs_wds:.2f} (target >= {TARGET_VS_WEBDATASET})")
    print(json.dumps({"samples": a.samples, "size": a.size, "reader_sps": round(rates["reader"], 1),
                      "floor_sps": round(rates["floor"], 1), "webdataset_sps": round(rates["webdataset"], 1),
                      "reader_vs_floor": round(vs_floor, 3), "target_reader_vs_floor": TARGET_VS_FLOOR,
                      "reader_vs_webdataset": round(vs_wds, 3), "target_reader_vs_webdataset": TARGET_VS_WEBDATASET}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
