"""The ``pipeline`` command: build-targets, status, teachers, make-demo. It only parses and calls.

Settings resolve as defaults < ``--config FILE`` (JSON or TOML, keys = BuildConfig fields) < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.config import BuildConfig
from pipeline.plan import BuildError
from pipeline.stages import STAGES, TEACHER_STAGES
from shards.errors import StoreError, StoreFault

DEFAULTS = BuildConfig()


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_build_flags(p: argparse.ArgumentParser, verb: str = "build") -> None:
    S = argparse.SUPPRESS  # unset flags stay absent, so a config file's values are not overridden
    p.add_argument("--config", metavar="FILE",
                   help="JSON or TOML file of settings, keys as BuildConfig's fields (coco_root, depth_teacher, "
                        "depth_params, ...); flags override it")
    p.add_argument("--coco-root", dest="coco_root", default=S, help=f"COCO 2017 root (default {DEFAULTS.coco_root})")
    p.add_argument("--images", default=S, metavar="DIR",
                   help="build the split from a folder of images (recursive: jpg, png, webp, bmp, tif), not from a "
                        "COCO split; --split names it. Keys are kept in <out>/<split>/ids.json: files added later "
                        "get new keys and only the shards that changed are built again")
    p.add_argument("--videos", default=S, metavar="PATH",
                   help="build the split from the frames of a video, or of every video in a folder (recursive: mp4, "
                        "avi, mov, mkv, webm, m4v): each sampled frame a sample, its video and time in meta.json")
    p.add_argument("--frame-step", dest="frame_step", type=int, default=S,
                   help="with --videos: take every N-th frame (default: by --video-fps)")
    p.add_argument("--video-fps", dest="video_fps", type=float, default=S,
                   help=f"with --videos: frames taken per second of video (default {DEFAULTS.video_fps:g})")
    p.add_argument("--split", default=S, help=f"split to build (default {DEFAULTS.split})")
    p.add_argument("--out", default=S, help=f"store root (default {DEFAULTS.out})")
    p.add_argument("--stages", default=S, type=lambda t: tuple(s for s in t.split(",") if s),
                   help=f"comma-separated stages (and their dependants) to {verb}; stages: "
                        f"{','.join(s.name for s in STAGES)}")
    p.add_argument("--size", type=int, default=S, help=f"store size S (default {DEFAULTS.size})")
    p.add_argument("--max-image-pixels", dest="max_image_pixels", type=int, default=S,
                   help=f"input images with more pixels are rejected as too-large, from their header, undecoded "
                        f"(default {DEFAULTS.max_image_pixels})")
    p.add_argument("--shard-size", dest="shard_size", type=int, default=S,
                   help=f"samples per shard (default {DEFAULTS.shard_size})")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=S,
                   help=f"images per teacher call (default {DEFAULTS.batch_size})")
    p.add_argument("--device", default=S, help=f"teacher device: auto, cpu, cuda, cuda:N (with --executor local) "
                                           f"(default {DEFAULTS.device})")
    p.add_argument("--dtype", default=S, help=f"teacher dtype (default {DEFAULTS.dtype})")
    for s in TEACHER_STAGES:
        p.add_argument(f"--{s}-teacher", dest=f"{s}_teacher", default=S,
                       help=f"{s} teacher (default {getattr(DEFAULTS, f'{s}_teacher')}; see `pipeline teachers`)")
        p.add_argument(f"--{s}-checkpoint", dest=f"{s}_checkpoint", default=S,
                       help=f"{s} teacher weights: hub id, folder or file (default: the teacher's own, which "
                            "`pipeline teachers` names)")
        p.add_argument(f"--{s}-param", dest=f"{s}_params", type=_param, action="append", default=S,
                       metavar="KEY=VALUE",
                       help=f"extra {s} teacher parameter (repeatable; VALUE as JSON; overrides that key of the "
                            f"config file's {s}_params)")
    p.add_argument("--normals-scale", dest="normals_scale", type=float, default=S,
                   help=f"depth scale of the normals stage (default {DEFAULTS.normals_scale})")
    p.add_argument("--vocab-size", dest="vocab_size", type=int, default=S,
                   help=f"vocabulary size (default {DEFAULTS.vocab_size})")
    p.add_argument("--glove", default=S, help=f"GloVe text file or gensim name (default {DEFAULTS.glove})")
    p.add_argument("--vocab-split", dest="vocab_split", default=S,
                   help=f"split whose captions make the vocabulary (default {DEFAULTS.vocab_split})")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    p.add_argument("--force", action="store_true", default=S, help="rebuild finished units of the chosen stages")
    p.add_argument("--executor", choices=("ray", "local"), default=S,
                   help=f"ray (a cluster or a local one) or local (in-process, same code) "
                        f"(default {DEFAULTS.executor})")
    p.add_argument("--ray-address", dest="ray_address", default=S,
                   help="Ray cluster to join (default: RAY_ADDRESS, else start a local one)")
    p.add_argument("--num-cpus", dest="num_cpus", type=int, default=S,
                   help="CPUs of a local Ray cluster (default: all)")
    p.add_argument("--gpus-per-teacher", dest="gpus_per_teacher", type=float, default=S,
                   help="GPUs per actor of a teacher that uses one, fractional allowed (default: the cluster's GPUs "
                        "shared evenly by those actors, at most 1 each; 0 on a cluster without GPUs)")
    p.add_argument("--cpus-per-teacher", dest="cpus_per_teacher", type=float, default=S,
                   help=f"CPUs reserved per teacher actor (default {DEFAULTS.cpus_per_teacher})")
    p.add_argument("--actors-per-teacher", dest="actors_per_teacher", type=int, default=S,
                   help=f"actors per teacher pool (default {DEFAULTS.actors_per_teacher})")
    p.add_argument("--teacher-actors", dest="shared_teacher_actors", default=S,
                   type=_teacher_actors, metavar="{auto,shared,separate}",
                   help="one actor pool hosting every teacher, or a pool per teacher (default auto: a pool per "
                        "teacher that takes a GPU, one shared pool for the others)")
    p.add_argument("--max-inflight-shards", dest="max_inflight_shards", type=int, default=S,
                   help=f"decoded shards in flight at once (default {DEFAULTS.max_inflight_shards})")
    p.add_argument("--retries", type=int, default=S, help=f"retries of a failed unit (default {DEFAULTS.retries})")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="no progress bars")


def _teacher_actors(value: str) -> bool | None:
    layouts = {"auto": None, "shared": True, "separate": False}
    if value not in layouts:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(layouts)}")
    return layouts[value]


def _read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BuildError(f"config file {path!r} does not exist")
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser as the tomli package
                try:
                    import tomli as tomllib
                except ImportError:
                    raise BuildError(f"config file {path!r}: TOML needs Python 3.11+ or `pip install tomli`; "
                                     "or write it as JSON") from None
            doc = tomllib.loads(p.read_text())
        else:
            doc = json.loads(p.read_text())
    except (ValueError, ImportError) as e:
        raise BuildError(f"config file {path!r} cannot be read: {e}") from None
    if not isinstance(doc, dict):
        raise BuildError(f"config file {path!r} holds a {type(doc).__name__}, not an object of settings")
    return doc


def _check_types(values: dict[str, Any], source: str) -> None:
    """A setting of the wrong type (``"size": "big"``, ``"depth_params": "input_size=518"``) is one line."""
    kinds = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "Mapping": (dict,),
             "tuple": (tuple, list)}
    for f in dataclasses.fields(BuildConfig):
        if f.name not in values:
            continue
        value, annotation = values[f.name], str(f.type)
        if value is None and "None" in annotation:
            continue
        expected = kinds.get(annotation.split("[")[0].split(" |")[0])
        if expected is None:
            continue
        wrong = not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
        if not wrong and expected == (tuple, list):
            wrong = not all(isinstance(v, str) for v in value)
        if wrong:
            raise BuildError(f"setting {f.name} in {source} must be {annotation.replace('Mapping', 'a mapping')}, "
                             f"got {value!r}")


def resolve_config(args: argparse.Namespace) -> BuildConfig:
    """BuildConfig from defaults < config file < flags (a teacher's ``*_params`` merge key by key); never from a
    store's manifest or build report, which describe data and choose nothing."""
    fields = {f.name for f in dataclasses.fields(BuildConfig)}
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "func")}
    layers: list[dict[str, Any]] = []  # lowest first; a teacher's *_params merge key by key across them
    if getattr(args, "config", None):
        layers.append(_read_config_file(args.config))
    layers.append(flags)
    values = _merge(layers)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise BuildError(f"unknown setting(s) {', '.join(unknown)} in {args.config}; settings are: "
                         f"{', '.join(sorted(fields))}")
    if isinstance(values.get("stages"), (list, str)):
        stages = values["stages"]
        values["stages"] = tuple(stages.split(",") if isinstance(stages, str) else stages)
    _check_types(values, getattr(args, "config", None) or "the settings")
    return BuildConfig(**values)


def _pairs(value: Any) -> Any:
    """A teacher's parameters as a dict: ``--x-param`` gives a list of (key, value) pairs, a file an object."""
    if isinstance(value, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return dict(value)
    return value


def _merge(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Settings of ``layers``, the later winning; the ``<stage>_params`` mappings merge key by key, so that
    ``--depth-param input_size=518`` changes that parameter of a config file's ``depth_params`` and keeps the
    others."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            value = _pairs(value) if key.endswith("_params") else value
            if key.endswith("_params") and isinstance(out.get(key), dict) and isinstance(value, dict):
                value = {**out[key], **value}
            out[key] = value
    return out


def _build_targets(args: argparse.Namespace) -> int:
    from pipeline.build import build_targets
    from pipeline.progress import summary_table

    config = resolve_config(args)
    if config.executor == "local":
        ignored = [flag for flag, value in (("--ray-address", config.ray_address), ("--num-cpus", config.num_cpus),
                                            ("--gpus-per-teacher", config.gpus_per_teacher))
                   if value is not None]
        if ignored:
            print(f"pipeline: note: {', '.join(ignored)} apply to --executor ray only; ignored", file=sys.stderr)
    elif config.gpus_per_teacher and config.device == "cpu":
        print(f"pipeline: note: --gpus-per-teacher {config.gpus_per_teacher:g} with --device cpu: the teachers run "
              "on CPU; no GPU is reserved for them", file=sys.stderr)
    if config.executor == "ray" and config.num_cpus is not None and (config.ray_address
                                                                     or os.environ.get("RAY_ADDRESS")):
        print("pipeline: note: --num-cpus sizes a local cluster started here; joining a running cluster, it is "
              "ignored (its nodes' CPUs count)", file=sys.stderr)
    _check_paths(config)
    _note_teachers_differ_from_vocab_split(config)
    report = build_targets(config)
    code = 0 if report["ok"] else 1
    try:
        print(summary_table(report))
        where = f"--out {shlex.quote(config.out)} --split {shlex.quote(config.split)}"
        for stage, change in (report.get("replaced") or {}).items():
            print(f"{stage}: version {change['from'][:12]} replaced by {change['to'][:12]}; what changed: "
                  f"pipeline diff {where} --stage {stage}")
        if report.get("samples"):
            print(f"a report of the split's targets: shards --shards {shlex.quote(config.out)} --split "
                  f"{shlex.quote(config.split)} report --out {shlex.quote(config.split)}-report")
    except BrokenPipeError:  # piped into `head`: the build's result still decides the exit code
        sys.stdout = open(os.devnull, "w")
    return code


def _diff(args: argparse.Namespace) -> int:
    from pipeline.diff import DiffError, diff_sheet, diff_versions, resolve_versions, summary_lines, write_diff

    if args.top < 0 or args.max_samples < 0:
        raise BuildError(f"--top and --max-samples must be >= 0, got {args.top} and {args.max_samples}")
    try:
        pair = resolve_versions(args.out, args.split, args.stage, args.old, args.new)
        diff, worst = diff_versions(args.out, args.split, pair, top=args.top,
                                    progress=args.progress and sys.stderr.isatty(), max_samples=args.max_samples,
                                    seed=args.seed)
    except StoreFault:  # a damaged store: exit 1, as `shards verify`
        raise
    except (DiffError, StoreError) as e:
        raise BuildError(str(e)) from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:  # a member that decodes, misshapen
        raise StoreFault(f"{args.split}: a member of the store is malformed ({type(e).__name__}: {str(e)[:200]}); "
                         "run `shards verify`") from None
    paths = write_diff(diff, diff_sheet(pair.stage, worst), args.report or f"diff-{args.split}-{pair.stage}")
    print("\n".join(summary_lines(diff)))
    print("written: " + ", ".join(paths.values()))
    return 0


def _note_teachers_differ_from_vocab_split(config: BuildConfig) -> None:
    """A split built with other teachers than the split whose vocabulary it shares (train's) is allowed, and
    rarely meant: build-targets takes no settings from an earlier build. Say so before the work starts."""
    if config.split == config.vocab_split:
        return
    from shards.layout import split_dir
    from shards.manifest import StoreError, load_manifest

    try:
        recorded = load_manifest(split_dir(config.out, config.vocab_split)).config
    except StoreError:
        return
    from pipeline.plan import absolute_paths

    keys = [f"{s}_{k}" for s in TEACHER_STAGES for k in ("teacher", "checkpoint", "params")] + ["dtype"]
    ours = absolute_paths(config).to_json()  # as the manifest records a build's settings
    differ = [k for k in keys if k in recorded and recorded[k] != ours[k]]
    if differ:
        print(f"pipeline: note: {config.split} is built with other teacher settings than {config.vocab_split} "
              f"was ({', '.join(differ)}); pass the same ones (a shared --config file) to keep the splits alike",
              file=sys.stderr)


def _check_paths(config: BuildConfig) -> None:
    """Fail before any teacher loads on a split without its image folder (every image would be rejected) or a
    store root that cannot be created or written (creates nothing)."""
    from pipeline.plan import check_inputs

    root = check_inputs(config).resolve()
    if config.images is None and config.videos is None and not (root / config.split).is_dir():
        raise BuildError(f"image folder {root / config.split} does not exist; unzip COCO's {config.split}.zip "
                         f"into {root}")
    if config.executor == "local" and str(config.device).startswith("cuda"):  # a Ray cluster may have GPUs elsewhere
        import torch

        if not torch.cuda.is_available():
            raise BuildError(f"--device {config.device}: no CUDA GPU is visible on this machine; use --device cpu "
                             "(or auto), or --executor ray on a cluster with GPUs")
    if config.executor == "ray":
        _check_ray_address(config.ray_address or os.environ.get("RAY_ADDRESS"))
    out = Path(config.out).expanduser()
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:  # the folder the build would create ``out`` in
        probe = probe.parent
    split = out.absolute() / config.split  # an existing split folder is where the build writes
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, f"{probe} is a file, not a folder")
        for folder in (probe, split) if split.is_dir() else (probe,):
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
    except OSError as e:
        raise BuildError(f"cannot write the store at {str(out)!r} ({e.strerror or e}); "
                         "pass --out a writable folder") from None


def _check_ray_address(address: str | None) -> None:
    """A ``host:port`` (or ``ray://host:port``) cluster address must accept connections: Ray itself retries an
    unreachable one for many minutes."""
    if not address or address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise BuildError(f"Ray address {address!r} is a dashboard or Ray Jobs URL; the driver joins a cluster at its "
                         "GCS address host:port (port 6379 by default) or ray://host:10001 (--ray-address or "
                         "RAY_ADDRESS)")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise BuildError(f"Ray address {address!r} is not host:port, ray://host:port or auto (--ray-address or "
                         "RAY_ADDRESS)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise BuildError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); check --ray-address or "
                         "RAY_ADDRESS, or leave both unset to start a local cluster") from None


def _status(args: argparse.Namespace) -> int:
    """Settings come from the user only (defaults < --config < flags), never from the store: a manifest or a
    build report may say what a build used, but never chooses a teacher, checkpoint, config file or path here.
    Without any setting given, the split's active versions are described (the store's own data only)."""
    from pipeline.status import format_status, split_status, store_status
    from shards.layout import split_dir
    from shards.schema import BUILD_REPORT_NAME

    recheck = vars(args).pop("recheck")
    where = ("command", "config", "out", "split", "stages")  # which split and stages, not what to compare with
    given = bool(getattr(args, "config", None)) or any(k not in where for k in vars(args))
    if recheck and not given:
        raise BuildError("--recheck loads the teachers of the settings you give, and none were given (status takes "
                         "none from the store); pass the build's --config FILE or its flags")
    config = resolve_config(args)
    manifest = split_dir(config.out, config.split) / "manifest.json"
    started = (manifest.parent / BUILD_REPORT_NAME).is_file()  # a first build that never finished
    if not (manifest.is_file() or started) and not (given and ("coco_root" in vars(args)
                                                                or Path(config.coco_root).is_dir())):
        raise BuildError(f"split {config.split!r} is not built in store {config.out!r} (no {manifest}); "
                         "check --out and --split, or pass --coco-root to see what a build would do")
    status = split_status(config, recheck=recheck) if given else store_status(config.out, config.split, config.stages)
    print(format_status(status))
    return 0


def _teachers(args: argparse.Namespace) -> int:
    from teachers.base import TASKS
    from teachers.registry import describe

    if args.task is not None and args.task not in TASKS:
        raise BuildError(f"unknown task {args.task!r} (--task); tasks are: {', '.join(TASKS)}")
    print(describe(args.task))
    return 0


def _make_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import make_demo

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {args.out} is a file; pass a folder to create the demo in")
    try:
        print(make_demo(out))
    except FileExistsError as e:  # a folder that holds someone else's COCO tree is left alone
        raise BuildError(str(e)) from None
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors end in one line (not the whole usage block) and exit code 2."""

    def error(self, message: str) -> None:
        raise BuildError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipeline", description="Build the teacher-target store of COCO splits.",
                     epilog="Start with `pipeline make-demo --out data/demo`, then `pipeline build-targets --help`.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")

    p = add("build-targets", "run the teachers and derived stages over a split")
    _add_build_flags(p)
    _add_run_flags(p)
    p.set_defaults(func=_build_targets)
    p = add("status", "active and requested version of every column of a split, for the settings given "
                      "(flags, --config; never the store's); without settings, the state of the active versions")
    _add_build_flags(p, verb="show")
    p.add_argument("--recheck", action="store_true",
                   help="load the teachers of the settings given (flags, --config; never settings from the store) "
                        "to fingerprint them; without it a teacher whose fingerprint no build recorded for the "
                        "same settings and unchanged weight files is reported unconfirmed (--recheck also "
                        "catches a hub model updated upstream since)")
    p.set_defaults(func=_status)
    p = add("diff", "how two versions of a column of a split differ: measures per sample and overall, and a "
                    "contact sheet of the samples that changed most")
    p.add_argument("--out", default="shards", help="store root (default shards)")
    p.add_argument("--split", required=True, help="split, e.g. train2017")
    p.add_argument("--stage", required=True, help="column to compare: depth, normals, panoptic, groups, text, "
                                                  "caption or tokens")
    p.add_argument("--from", dest="old", default=None, metavar="FP",
                   help="the older version (fingerprint or a unique prefix of at least 6 hex digits); default: the "
                        "newest version on disk other than --to")
    p.add_argument("--to", dest="new", default=None, metavar="FP", help="the newer version; default: the active one")
    p.add_argument("--top", type=int, default=8, help="samples on the contact sheet, the most changed (default 8)")
    p.add_argument("--max-samples", type=int, default=0,
                   help="compare this many samples, the first ones of up to 32 seeded shards (default 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of that draw (default 0)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="folder for diff.json and diff-sheet.png (default diff-<split>-<stage>)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_diff)
    p = add("teachers", "list the registered teachers with their specs")
    p.add_argument("--task", default=None, help="only teachers of this task (depth, panoptic, text, caption)")
    p.set_defaults(func=_teachers)
    p = add("make-demo", "write the small demo COCO root")
    p.add_argument("--out", default="data/demo", help="folder to create (default data/demo)")
    p.set_defaults(func=_make_demo)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, ``timeout``, a cluster scheduler): handled as Ctrl-C is, exit code 143."""


_signals: list[int] = []  # what stopped the command: Ray re-raises a KeyboardInterrupt of its own in its waits


def _terminate(signum: int, frame: Any) -> None:
    _signals.append(signum)
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pipeline`` command; returns the exit code (2 = bad input, 1 = some unit failed, 130 = Ctrl-C,
    143 = SIGTERM)."""
    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # signals are the main thread's
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # kept past ray.init (executors)
    _signals.clear()
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # argparse names the top-level parser; the flags belong to the subcommand
            raise BuildError(f"unrecognized arguments: {' '.join(extra)} (see `pipeline {args.command} --help`)")
        func = args.func
        del args.func
        return func(args)
    except BuildError as e:
        print(f"pipeline: error: {e}", file=sys.stderr)
        return 2
    except StoreFault as e:  # a store found damaged mid-build (a record that does not hold what was written)
        print(f"pipeline: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated) or signal.SIGTERM in _signals
        print(f"pipeline: {'terminated' if terminated else 'interrupted'}; finished units are kept: run the same "
              "command again to resume", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as e:  # a disk that fills up or turns read-only mid-run
        where = f" {e.filename}:" if e.filename else ""
        print(f"pipeline: error:{where} {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if main_thread and previous is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
