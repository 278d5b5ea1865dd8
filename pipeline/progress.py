"""What a build shows a person: one progress bar per stage (units, images, rate, ETA) and a summary table."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping


class Progress:
    """tqdm bars, one per stage with work to do; counts images, shows units done in the postfix.

    Where stderr is not a terminal (a log file, a CI job) each finished unit prints one line instead.

    Args:
        totals: stage -> (units to run, images in those units).
        enabled: False shows nothing (tests, benchmarks).
        header: a line printed above the bars (where the teachers run).
    """

    def __init__(self, totals: Mapping[str, tuple[int, int]], enabled: bool = True, header: str | None = None
                 ) -> None:
        self.totals = dict(totals)
        self.units = {s: 0 for s in totals}
        self.images = {s: 0 for s in totals}
        self.bars: dict[str, Any] = {}
        self.lines = enabled and not sys.stderr.isatty()
        self.start = time.monotonic()
        if enabled and header:
            print(header, file=sys.stderr, flush=True)
        if enabled and not self.lines:
            from tqdm import tqdm

            width = max((len(s) for s in totals), default=8)
            for pos, (s, (units, images)) in enumerate(t for t in totals.items() if t[1][0] > 0):
                self.bars[s] = tqdm(total=images, desc=s.ljust(width), unit="img", position=pos, dynamic_ncols=True,
                                    file=sys.stderr, leave=True)
                self.bars[s].set_postfix_str(f"0/{units} units")

    def update(self, stage: str, images: int) -> None:
        """One unit of ``stage`` finished after handling ``images`` images."""
        self.units[stage] = self.units.get(stage, 0) + 1
        self.images[stage] = self.images.get(stage, 0) + images
        bar = self.bars.get(stage)
        if bar is not None:
            bar.update(images)
            bar.set_postfix_str(f"{self.units[stage]}/{self.totals[stage][0]} units")
        elif self.lines:
            rate = self.images[stage] / max(time.monotonic() - self.start, 1e-9)
            print(f"{stage}: {self.units[stage]}/{self.totals[stage][0]} units, {self.images[stage]} images, "
                  f"{rate:.1f} img/s", file=sys.stderr, flush=True)

    def shrink(self, stage: str, images: int) -> None:
        """``images`` fewer images than planned reach ``stage`` (rejected by the base stage)."""
        bar = self.bars.get(stage)
        if bar is not None:
            bar.total -= images
            bar.refresh()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        for bar in self.bars.values():
            bar.close()


#: The error of a unit the build never ran because a unit it reads failed (build-report.json "failures").
NOT_RUN = "not run: an input unit failed"


def summary_table(report: Mapping[str, Any]) -> str:
    """The end-of-build table: per stage images, busy seconds, images/s, units run/skipped/failed, rejected."""
    head = ("stage", "images", "busy s", "img/s", "run", "skipped", "failed", "rejected", "active")
    rows = [head]
    for name, st in report["stages"].items():
        rate = st.get("images_per_s")
        rows.append((name, str(st["images"]), f"{st['seconds']:.1f}", "-" if rate is None else f"{rate:.1f}",
                     str(st["run"]), str(st["skipped"]), str(st["failed"]), str(st["rejected"]),
                     (st.get("active") or "-")[:12]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    setup = report.get("setup_seconds")
    cluster = report.get("cluster")
    on = report["executor"] + (f" ({cluster['nodes']} node(s) at {cluster['address']}, {cluster['cpus']:g} CPUs, "
                               f"{cluster['gpus']:g} GPUs)" if cluster else "")
    tail = (f"{report['split']}: {report['samples']} samples, {report['rejected']} rejected, "
            f"{report['image_ids']} image ids, {report['wall_seconds']:.1f} s on {on}"
            + (f" ({setup:.1f} s of it checking inputs and loading teachers)" if setup else ""))
    failed = [f for f in report["failures"] if f["error"] != NOT_RUN]
    if failed:
        first = failed[0]
        error = (first["error"].strip().splitlines() or [""])[0]
        where = f"{first['stage']} {first['shard']}" if first["shard"] else first["stage"]  # the vocabulary: no shard
        not_run = len(report["failures"]) - len(failed)
        tail += (f"; {len(failed)} unit(s) failed" + (f" ({not_run} more not run: their input failed)"
                                                      if not_run else "") + f", first {where}: {error}")
    placement = report.get("teachers") or {}
    where = ["teachers: " + "; ".join(f"{s} {at}" for s, at in placement.items())] if placement else []
    return "\n".join(lines + where + [tail])
