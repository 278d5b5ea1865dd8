"""The ``shards`` command: ``info``, ``verify``, ``show``, ``gc`` and ``export`` on a store split.

Errors end in one line on stderr: exit 2 for usage errors (bad flag, no such store, split, column or key, an
``--out`` that cannot be one), exit 1 for a damaged store (any command that meets a corrupt manifest or
``column.json``, a missing, truncated or altered shard, a member that does not decode; ``verify`` names shard,
column and key) and when ``gc`` keeps a column whose active version is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from shards.atomic import out_folder_problem
from shards.codecs import CodecError
from shards.layout import split_dir
from shards.manifest import StoreError, StoreFault, load_manifest, read_json
from shards.schema import VOCAB_NAME

PROG = "shards"


class UsageError(Exception):
    """A mistake in the command line or its arguments (exit 2)."""


def _local_root(args: argparse.Namespace, command: str) -> None:
    """UsageError unless ``--shards`` is a local folder: ``command`` reads (or changes) the store in place."""
    from shards.streams import is_url

    if str(args.shards).startswith("file://"):  # a local folder written as a URL
        args.shards = str(args.shards)[len("file://"):]
    if is_url(args.shards):
        raise UsageError(f"`{PROG} {command}` needs a local store root, not {args.shards}: it reads the store's "
                         f"folders in place; run it where the store lies (`{PROG} show` and `{PROG} export` read a "
                         "remote store, and the reader checks each shard against its column.json as it streams)")


def _info(args: argparse.Namespace) -> int:
    from shards.gc import is_version_dir
    from shards.reader import active_column_records

    _local_root(args, "info")
    path = split_dir(args.shards, args.split)
    m = load_manifest(path)
    vocab = path / VOCAB_NAME
    doc = read_json(vocab) if vocab.exists() else {}
    if not isinstance(doc, dict) or not isinstance(doc.get("words", []), list):
        raise StoreFault(f"{vocab}: not a vocabulary (an object with a 'words' list); run `shards verify`")
    words = len(doc.get("words", []))
    rows = []
    for column, fp in m.columns.items():
        records = active_column_records(args.shards, args.split, column, fp)  # a damaged record is a StoreFault
        done = [records[s] for s in m.shard_names if s in records]
        nbytes = sum(r.bytes for r in done)
        others = sorted(p.name[:12] for p in (path / column).iterdir() if p.name != fp and is_version_dir(p))
        rows.append({"column": column, "version": fp, "shards": len(done), "samples": sum(r.count for r in done),
                     "bytes": nbytes, "bytes_per_sample": nbytes / max(1, m.num_samples), "inactive": others})
    if args.json:
        print(json.dumps({"split": m.split, "size": m.size, "shard_size": m.shard_size,
                          "num_samples": m.num_samples, "shards": len(m.shards), "rejected": m.rejected,
                          "vocab_words": words, "columns": rows}, indent=1))
        return 0
    print(f"{path}: {m.num_samples} samples in {len(m.shards)} shards (shard size {m.shard_size}), "
          f"store size {m.size}x{m.size}, {m.rejected} rejected, vocab.json: "
          + (f"{words} words" if vocab.exists() else "none"))
    print(f"{'column':10s} {'version':12s} {'shards':>9s} {'samples':>8s} {'MiB':>9s} {'KiB/sample':>10s}  inactive")
    for r in rows:
        print(f"{r['column']:10s} {r['version'][:12]:12s} {r['shards']:>4d}/{len(m.shards):<4d} {r['samples']:>8d} "
              f"{r['bytes'] / 2**20:9.2f} {r['bytes_per_sample'] / 1024:10.1f}  {', '.join(r['inactive']) or '-'}")
    total = sum(r["bytes"] for r in rows)
    print(f"{'total':10s} {'':12s} {'':9s} {'':8s} {total / 2**20:9.2f} {total / max(1, m.num_samples) / 1024:10.1f}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from shards.verify import verify_split

    _local_root(args, "verify")
    active = load_manifest(split_dir(args.shards, args.split)).columns
    unknown = [c for c in args.columns or () if c not in active]
    if unknown:
        raise UsageError(f"column(s) {', '.join(unknown)} not active in {split_dir(args.shards, args.split)}; "
                         f"active columns: {', '.join(active)}")
    report = verify_split(args.shards, args.split, args.columns, decode=not args.no_decode, first_only=not args.all)
    if not report.ok:
        for fault in report.faults:
            print(f"{PROG} verify: {fault}", file=sys.stderr)
        return 1
    for name in report.stray:  # not a fault: the store itself is whole
        print(f"{PROG} verify: warning: stray file {name} in split {args.split!r} (no tool wrote it there)",
              file=sys.stderr)
    print(f"OK: {report.shards} shards x {len(report.columns)} columns ({', '.join(report.columns)}), "
          f"{report.samples} samples")
    return 0


def _show(args: argparse.Namespace) -> int:
    from shards.show import check_sheet_path, normalize_key, show_sample

    if args.out is not None:
        try:
            check_sheet_path(args.out)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.key is None:  # the split's first sample
        from shards.reader import StoreReader, load_manifest_at

        reader = StoreReader(args.shards, args.split, ["base"] if "base" in load_manifest_at(
            args.shards, args.split).columns else None, decode=False)
        first = next((s for name in reader.manifest.shard_names for s in reader.read_shard(name)), None)
        if first is None:
            raise UsageError(f"split {args.split!r} of store {args.shards} has no samples "
                             f"({reader.manifest.rejected} images rejected: see its rejected.jsonl)")
        key = first["__key__"]
    else:
        try:
            key = normalize_key(args.key)
        except ValueError as e:
            raise UsageError(str(e)) from None
    out = args.out or Path(f"show-{key}.png")
    print(show_sample(args.shards, args.split, key, out))
    return 0


def _gc(args: argparse.Namespace) -> int:
    from shards.gc import collect_garbage

    _local_root(args, "gc")
    if not args.min_age >= 0:
        raise UsageError(f"--min-age must be a number of seconds >= 0, got {args.min_age:g}")
    result = collect_garbage(args.shards, args.split, dry_run=args.dry_run, min_age_s=args.min_age)
    verb = "would remove" if args.dry_run else "removed"
    for p in result.removed:
        print(f"{verb} {p}")
    for p in result.kept_recent:
        print(f"kept {p} (modified less than {args.min_age:g} s ago: a build may be writing it; "
              "--min-age 0 removes it)")
    for k in result.kept_columns:
        print(f"kept column {k.column!r} whole ({len(k.versions)} inactive version(s)): {k.reason}; "
              f"run `shards --shards {args.shards} --split {args.split} verify`"
              + (" and rebuild or re-point the column" if k.faulty else ""))
    print(f"{verb} {len(result.removed)} inactive version(s) and leftover temporary file(s), "
          f"{result.bytes / 2**20:.1f} MiB")
    return 1 if any(k.faulty for k in result.kept_columns) else 0


def _export(args: argparse.Namespace) -> int:
    from shards.export import ExportTargetError, export_webdataset

    try:
        result = export_webdataset(args.shards, args.split, args.out, args.columns, overwrite=args.overwrite)
    except ExportTargetError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {len(result.paths)} tars, {result.samples} samples, to {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from shards.report import build_report

    _local_root(args, "report")
    if args.max_samples < 1:
        raise UsageError(f"--max-samples must be >= 1, got {args.max_samples}")
    problem = out_folder_problem(args.out)
    if problem:
        raise UsageError(f"cannot write --out {args.out}: {problem}")
    try:
        page = build_report(args.shards, args.split, args.out, max_samples=args.max_samples, seed=args.seed,
                            progress=args.progress and sys.stderr.isatty())
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:  # a member that decodes, misshapen
        raise StoreFault(f"{args.split}: a member of the store is malformed ({type(e).__name__}: {str(e)[:200]}); "
                         "run `shards verify`") from None
    print(f"report: {page}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Inspect and maintain the training store.",
                epilog="--shards and --split may also follow the command: shards verify --shards data/synth")
    p.add_argument("--shards", default="shards", metavar="ROOT", help="store root (default: shards)")
    p.add_argument("--split", default="train2017", help="split (default: train2017)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)  # the same two flags after the command; absent ones keep the values above
    common.add_argument("--shards", default=argparse.SUPPRESS, metavar="ROOT", help="store root (default: shards)")
    common.add_argument("--split", default=argparse.SUPPRESS, help="split (default: train2017)")
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "info": (_info, "columns, versions, counts and bytes per sample"),
        "verify": (_verify, "check every shard: sha256, counts, aligned keys, decodable members"),
        "show": (_show, "write a PNG contact sheet of one sample"),
        "gc": (_gc, "remove inactive column versions"),
        "export": (_export, "pack the active columns into one single-tar-per-shard WebDataset"),
        "report": (_report, "write an HTML report of the active columns (plots, frequencies, contact sheets)"),
    }
    parsers = {name: sub.add_parser(name, help=h, description=h, parents=[common])
               for name, (_, h) in commands.items()}
    for name, sp in parsers.items():
        sp.set_defaults(func=commands[name][0])
    parsers["info"].add_argument("--json", action="store_true", help="print JSON")
    parsers["verify"].add_argument("--columns", nargs="+", default=None, help="columns to check (default: active)")
    parsers["verify"].add_argument("--no-decode", action="store_true", help="skip decoding members (faster)")
    parsers["verify"].add_argument("--all", action="store_true", help="report every fault, not only the first")
    parsers["show"].add_argument("key", nargs="?", default=None,
                                 help="sample key or COCO image id, e.g. 397133 (default: the first sample)")
    parsers["show"].add_argument("--out", type=Path, default=None,
                                 help="image path, .png, .jpg or .jpeg (default: show-<key>.png)")
    parsers["gc"].add_argument("--dry-run", action="store_true", help="only list what would be removed")
    parsers["gc"].add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                               help="keep versions modified more recently (default 3600: a build may be writing)")
    parsers["export"].add_argument("--out", type=Path, required=True, help="output folder for the tars")
    parsers["export"].add_argument("--columns", nargs="+", default=None, help="columns (default: all active)")
    parsers["export"].add_argument("--overwrite", action="store_true",
                                   help="export into a non-empty folder that is not an earlier export of the split; "
                                        "only the files an export writes are replaced there (its tars, vocab.json, "
                                        "export.json and the tars that lists), nothing else")
    parsers["report"].add_argument("--out", type=Path, required=True,
                                   help="folder for index.html, its plots and contact sheets, and report.json")
    parsers["report"].add_argument("--max-samples", type=int, default=2000,
                                   help="samples the target figures are taken from (default 2000; a seeded draw "
                                        "of up to 32 shards' first samples)")
    parsers["report"].add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    parsers["report"].add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shards`` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (StoreFault, CodecError) as e:  # a damaged store (a member that does not decode too), as verify says
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except (StoreError, FileNotFoundError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as e:  # e.g. a read-only --out
        where = f" {e.filename}:" if e.filename else ""
        print(f"{PROG}: error:{where} {e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
