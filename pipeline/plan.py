"""Planning a build before any work: check the inputs, load the teachers, fingerprint every stage, cut the
split into shards and find the unfinished (stage, shard) units."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from shards.layout import column_dir, split_dir
from shards.manifest import StoreError, is_plain_name, load_manifest
from shards.schema import MAX_STORE_SIZE, VOCAB_NAME, shard_name
from shards.writer import ColumnWriter

from pipeline.executors import (ClusterConnectionError, ClusterResourceError, Executor, LocalExecutor, TeacherFactory,
                                check_gpu_share)
from pipeline.nodes import check_nodes
from pipeline.stages import STAGES, TEACHER_STAGES, ancestors, dependants, fingerprint, resolve_specs, stage
from pipeline.targets.tokens import check_glove_file
from pipeline.teacher_record import recorded_fingerprints, teacher_settings
from pipeline.sources import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, cut_by_id, forget_shards, list_images,
                              list_video_frames, plan_folder, read_id_map, shard_digests, write_id_map)
from pipeline.units import rejected_path

if TYPE_CHECKING:
    from pipeline.config import BuildConfig

class BuildError(ValueError):
    """Bad input a user can fix (path, split, teacher, checkpoint, flag); the message is one line."""


@dataclass
class Plan:
    """Everything a build needs to run: shards, fingerprints, unfinished units, teachers."""

    config: "BuildConfig"
    split_path: Path
    shards: list[str]  # shard names in order
    records: dict[str, list[Any]]  # shard -> its ImageRecords (every image id of the split, sorted)
    specs: dict[str, dict[str, Any]]
    fps: dict[str, str]
    run_stages: list[str]  # stages this build works on, in graph order
    pending: dict[str, set[str]]  # stage -> shards still to write
    active: dict[str, str]  # the manifest's active fingerprints before the build
    factories: dict[str, TeacherFactory] = field(default_factory=dict)  # the loaded teachers' stages
    vocab_path: str | None = None  # vocabulary of the tokens stage when it already exists
    teacher_fps: dict[str, str] = field(default_factory=dict)  # teacher stage -> the teacher's own fingerprint
    recorded: list[str] = field(default_factory=list)  # teacher stages fingerprinted from teachers.json
    teacher_settings: dict[str, Any] = field(default_factory=dict)  # stage -> teacher_record.teacher_settings
    dropped_annotations: list[dict[str, Any]] = field(default_factory=list)  # malformed ones left out (coco.py)
    removed_files: list[str] = field(default_factory=list)  # a folder source's files gone since the last build
    added_files: int = 0  # a folder source's files new since the last build
    id_map: Any = None  # a folder source's id map with this plan's shard digests: written once all columns hold them
    source_notes: list[str] = field(default_factory=list)  # files or videos a folder source left out, and why

    def teacher_stages_to_run(self) -> list[str]:
        return [s for s in self.run_stages if stage(s).kind == "teacher" and self.pending[s]]


def available_splits(coco_root: Path) -> list[str]:
    """Splits with a captions (annotated) or image_info (unlabeled) file under ``coco_root/annotations``."""
    ann = coco_root / "annotations"
    if not ann.is_dir():
        return []
    return sorted({p.name.removeprefix(kind).removesuffix(".json") for kind in ("captions_", "image_info_")
                   for p in ann.glob(f"{kind}*.json")})


def check_inputs(config: "BuildConfig") -> Path:
    """The cheap checks: flags, COCO root, split. Returns the resolved COCO root."""
    counts = [("size", config.size, 1), ("shard-size", config.shard_size, 1), ("batch-size", config.batch_size, 1),
              ("vocab-size", config.vocab_size, 1), ("actors-per-teacher", config.actors_per_teacher, 1),
              ("max-inflight-shards", config.max_inflight_shards, 1), ("retries", config.retries, 0)]
    if config.num_cpus is not None:  # a cluster without CPUs would wait forever for its first task
        counts.append(("num-cpus", config.num_cpus, 1))
    for name, value, least in counts:
        if int(value) < least:
            raise BuildError(f"--{name} must be >= {least}, got {value}")
    if int(config.max_image_pixels) < 1:
        raise BuildError(f"--max-image-pixels must be >= 1, got {config.max_image_pixels}")
    if int(config.size) > MAX_STORE_SIZE:
        raise BuildError(f"--size must be <= {MAX_STORE_SIZE}, got {config.size}")
    if not (math.isfinite(config.cpus_per_teacher) and config.cpus_per_teacher >= 0):
        raise BuildError(f"--cpus-per-teacher must be a finite number >= 0, got {config.cpus_per_teacher}")
    if not (math.isfinite(config.normals_scale) and config.normals_scale > 0):
        raise BuildError(f"--normals-scale must be a finite number > 0, got {config.normals_scale}")
    if config.gpus_per_teacher is not None:
        try:
            check_gpu_share(config.gpus_per_teacher)
        except ValueError as e:
            raise BuildError(str(e)) from None
        if config.executor == "ray" and config.gpus_per_teacher == 0 and str(config.device).startswith("cuda"):
            raise BuildError(f"--device {config.device} with --gpus-per-teacher 0: teacher actors that reserve no "
                             "GPU run on CPU; give them a GPU share or use --device cpu (or auto)")
    if config.executor == "ray" and str(config.device).startswith("cuda:") and config.device != "cuda:0":
        raise BuildError(f"--device {config.device}: on Ray each teacher actor sees only the GPU it reserved, as "
                         "cuda:0; use --device cuda (or auto), or --executor local to pick a GPU of this machine")
    check_stages(config.stages)
    if config.images is not None and config.videos is not None:
        raise BuildError("--images and --videos: give one source per split")
    if config.videos is not None:
        if int(config.frame_step) < 0 or not (math.isfinite(config.video_fps) and config.video_fps > 0):
            raise BuildError(f"--frame-step must be >= 0 and --video-fps > 0, got {config.frame_step} and "
                             f"{config.video_fps}")
        if not os.path.exists(os.path.expanduser(config.videos)):
            raise BuildError(f"--videos {config.videos}: no such video file or folder")
    if config.images is not None or config.videos is not None:  # a folder source: the COCO root plays no part
        folder = Path(config.images or config.videos).expanduser()
        if config.images is not None and not folder.is_dir():
            raise BuildError(f"--images {config.images}: not a folder of images")
        if not is_plain_name(shard_name(config.split, 0)):  # the store's own rule for the names it holds
            raise BuildError(f"--split {config.split!r}: name the folder's split with letters, digits, '_' and "
                             "'-', at most 120 (it names a folder and the shards of the store)")
        return folder
    root = Path(config.coco_root).expanduser()
    if not root.is_dir():
        raise BuildError(f"COCO root {str(root)!r} does not exist; pass --coco-root DIR "
                         f"(a folder holding annotations/ and the split's image folder)")
    splits = available_splits(root)
    if config.split not in splits:
        raise BuildError(f"split {config.split!r} not found under {str(root)!r} (no annotations/captions_"
                         f"{config.split}.json or image_info_{config.split}.json); splits there: "
                         f"{', '.join(splits) or 'none'}")
    return root


def teacher_choice(config: "BuildConfig", s: str) -> tuple[str, str | None, dict[str, Any]]:
    """(teacher name, checkpoint, extra parameters) configured for teacher stage ``s``."""
    return getattr(config, f"{s}_teacher"), getattr(config, f"{s}_checkpoint"), dict(getattr(config, f"{s}_params"))


def check_stages(names: Iterable[str]) -> None:
    """Raise BuildError for a name that is no stage (``--stages``)."""
    for s in names:
        if s not in {st.name for st in STAGES}:
            raise BuildError(f"unknown stage {s!r}; stages are: {', '.join(st.name for st in STAGES)}")


def teacher_factories(config: "BuildConfig", stages: list[str]) -> dict[str, TeacherFactory]:
    """Check every configured teacher name, then say how to build the teachers of ``stages`` (loads nothing)."""
    from teachers.base import TeacherError
    from teachers.registry import list_teachers, teacher_class

    known = list_teachers()
    for s in TEACHER_STAGES:
        name = teacher_choice(config, s)[0]
        if name not in known:
            raise BuildError(f"unknown {s} teacher {name!r} (--{s}-teacher); teachers are: {', '.join(known)}")
    factories = {}
    for s in stages:
        name, checkpoint, params = teacher_choice(config, s)
        try:
            cls = teacher_class(name)
        except (TeacherError, ImportError) as e:
            raise BuildError(f"{s} teacher {name!r} cannot be imported: {e}") from None
        if cls.spec.task != stage(s).task:
            raise BuildError(f"teacher {name!r} is a {cls.spec.task} teacher, not a {s} one "
                             f"(see `pipeline teachers --task {s}`)")
        kwargs = {"device": config.device, "dtype": config.dtype, "batch_size": config.batch_size, **params}
        if checkpoint is not None:
            if "checkpoint" in params and params["checkpoint"] != checkpoint:
                raise BuildError(f"--{s}-checkpoint {checkpoint} and --{s}-param checkpoint={params['checkpoint']} "
                                 f"disagree; give the weights once, with --{s}-checkpoint")
            kwargs["checkpoint"] = checkpoint
        factories[s] = TeacherFactory(cls, kwargs)
    return factories


def load_teachers(config: "BuildConfig", factories: dict[str, TeacherFactory], executor: Executor) -> dict[str, str]:
    """Load the teachers of ``factories`` where the executor runs them (in this process, or once in Ray actors)
    and collect their fingerprints; a teacher that does not load is one BuildError line.

    Returns:
        stage -> teacher fingerprint.
    """
    from teachers.base import TeacherError

    fps = {}
    try:
        started = executor.start(factories)
    except (ClusterResourceError, ClusterConnectionError) as e:  # GPU shares that do not fit; no cluster
        raise BuildError(str(e)) from None
    for s, result in started.items():
        name, _, params = teacher_choice(config, s)
        if isinstance(result, TeacherError):  # its message names the teacher already, most of the time
            text = re.sub(rf"^teacher {re.escape(repr(name))}:? ", "", str(result))
            raise BuildError(f"{s} teacher {name!r}: {text}") from None
        if isinstance(result, TypeError) and "unexpected keyword argument" in str(result):  # a --*-param
            raise BuildError(f"{s} teacher {name!r} does not take these parameters {sorted(params)}: "
                             f"{result}") from None
        if isinstance(result, (TypeError, ValueError)) and params:  # a parameter value of the wrong kind
            raise BuildError(f"{s} teacher {name!r} cannot use the parameters {params} "
                             f"(--{s}-param): {type(result).__name__}: {result}") from None
        if isinstance(result, BaseException):
            raise result
        fps[s] = result
    return fps


def _file_sha256(path: str) -> str:
    from shards.writer import file_sha256

    return file_sha256(path)


def tokens_params(config: "BuildConfig", store_root: Path) -> tuple[dict[str, Any], str | None]:
    """Parameters of the tokens stage and, for a split that reuses another's vocabulary, its path."""
    if config.split != config.vocab_split:
        vocab = split_dir(store_root, config.vocab_split) / VOCAB_NAME
        if not vocab.is_file():
            raise BuildError(f"{config.split} reuses the vocabulary of {config.vocab_split}, but {vocab} does not "
                             f"exist; build --split {config.vocab_split} first (or set --vocab-split)")
        return {"vocab_sha256": _file_sha256(str(vocab))}, str(vocab)
    glove = config.glove
    if os.path.isfile(glove):
        try:
            check_glove_file(glove)
        except (ValueError, OSError) as e:
            raise BuildError(f"{e}; pass --glove glove.6B.300d.txt or a gensim model name") from None
        glove_id = f"sha256:{_file_sha256(glove)}"
    elif os.sep in glove or glove.endswith((".txt", ".gz", ".bin")):
        raise BuildError(f"GloVe file {glove!r} does not exist; pass --glove FILE (GloVe text format) "
                         f"or a gensim model name")
    else:
        glove_id = f"gensim:{glove}"
    return {"vocab_size": int(config.vocab_size), "glove": glove_id, "stopwords": "paper"}, None


def check_gensim_model(name: str) -> None:
    """A GloVe model named for gensim's downloader must be downloaded already or be known to its download list;
    otherwise a build would only find out after the whole caption column (one line, exit 2)."""
    if os.path.isfile(name):
        return
    try:
        import gensim.downloader
    except ImportError:
        raise BuildError(f"--glove {name}: gensim is not installed; pass a GloVe text file (glove.6B.300d.txt) "
                         "or `pip install gensim`") from None
    if (Path(gensim.downloader.BASE_DIR) / name).is_dir():
        return
    import json
    from urllib.request import urlopen

    try:  # read the list itself, with a timeout: gensim's own call falls back to a stale local copy offline
        with urlopen(gensim.downloader.DATA_LIST_URL, timeout=15) as response:
            known = json.loads(response.read().decode())["models"]
    except Exception as e:  # noqa: BLE001 - offline: a URLError, a socket timeout, ...
        raise BuildError(f"--glove {name}: not in gensim's data folder {gensim.downloader.BASE_DIR} and its "
                         f"download list cannot be reached ({type(e).__name__}); pass --glove glove.6B.300d.txt "
                         "(a GloVe text file)") from None
    if name not in known:
        raise BuildError(f"--glove {name}: gensim knows no such model (glove models: "
                         f"{', '.join(m for m in known if m.startswith('glove'))}), and it is no file")


def absolute_paths(config: "BuildConfig") -> "BuildConfig":
    """The config with every local path made absolute: Ray workers do not share the driver's directory."""
    def local(path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))  # "~/..." from a config file or --flag=~/...

    changes: dict[str, Any] = {"out": local(config.out), "coco_root": local(config.coco_root)}
    for key in ("images", "videos"):
        if getattr(config, key) is not None:
            changes[key] = local(getattr(config, key))
    for key in ("glove", *(f"{s}_checkpoint" for s in TEACHER_STAGES)):
        value = getattr(config, key)
        if value is not None and os.path.exists(os.path.expanduser(value)):  # else a hub id or gensim name
            changes[key] = local(value)
    return dataclasses.replace(config, **changes)


def _say(config: "BuildConfig", line: str) -> None:
    """A line about slow set-up work for someone watching a terminal (not with ``--no-progress``; not in logs,
    where an error on bad input stays the only line)."""
    if config.progress and sys.stderr.isatty():
        print(line, file=sys.stderr, flush=True)


#: Threads that check the sha256 of finished shards when a build plans (a resumed train2017 store: tens of GB).
HASH_THREADS = min(8, os.cpu_count() or 1)


def _all_done(config: "BuildConfig", split_path: Path, stage_name: str, teacher: tuple[str, str],
              shards: list[str]) -> bool:
    """True when every shard of teacher stage ``stage_name`` is written at the version that ``teacher`` (name and
    recorded fingerprint) gives it: a build then has no use for loading that teacher."""
    specs = resolve_specs(config.size, config.shard_size, {stage_name: teacher}, {}, config.max_image_pixels)
    done = ColumnWriter(split_path, stage_name, fingerprint(specs[stage_name])).done_shards(shards,
                                                                                            threads=HASH_THREADS)
    return len(done) == len(shards)


def prepare(config: "BuildConfig", executor: Executor | None = None, reuse_recorded: str = "when_done",
            hold: Callable[[Path], Any] | None = None) -> Plan:
    """Check the inputs and plan the build; raises BuildError (one line) before any unit runs.

    Args:
        config: the build settings.
        executor: where the teachers are loaded (the build's executor, started here); None = in this process.
        reuse_recorded: when to take a teacher's fingerprint from the split's ``teachers.json`` (recorded by a
            build for the same settings) instead of loading the teacher: ``"always"`` (``pipeline status``),
            ``"never"`` (``status --recheck``), or ``"when_done"`` (a build: only for a teacher whose units are
            all done at that version, which then has no use being loaded; every teacher that may run is loaded).
        hold: called with the split folder once the cheap checks passed, before the cluster's nodes are checked
            and the teachers load (a build takes its lock there; it raises BuildError to refuse).
    """
    from pipeline.coco import CocoError, load_split

    config = absolute_paths(config)
    root = check_inputs(config)
    dropped: list[dict[str, Any]] = []
    folder = None
    if config.images is not None or config.videos is not None:
        flag, what = ("--images", "image files") if config.images is not None else ("--videos", "readable videos")
        _say(config, f"listing the {what} under {root}")
        try:
            listing = (list_images(root) if config.images is not None
                       else list_video_frames(root, int(config.frame_step), float(config.video_fps)))
            id_map = read_id_map(split_dir(Path(config.out), config.split))
            folder = plan_folder(listing, id_map)
        except OSError as e:
            raise BuildError(f"{flag} {root}: cannot list it ({e.strerror or e})") from None
        records = folder.records
        if not records:
            exts = IMAGE_EXTENSIONS if config.images is not None else VIDEO_EXTENSIONS
            raise BuildError(f"{flag} {root}: no {what} ({', '.join(exts)}) in it")
    else:
        _say(config, f"reading the COCO annotations of {config.split}")  # about half a minute on train2017
        try:
            records = load_split(root, config.split, dropped)
        except CocoError as e:
            raise BuildError(str(e)) from None
    if dropped:
        _say(config, f"{len(dropped)} malformed person annotation(s) left out (first: image {dropped[0]['image_id']}, "
                     f"{dropped[0]['reason']}); build-report.json lists them")
    chosen = dependants(config.stages) if config.stages else [s.name for s in STAGES]
    needed = set(chosen) | set(ancestors(chosen))

    store_root = Path(config.out)
    split_path = split_dir(store_root, config.split)
    derived: dict[str, dict[str, Any]] = {"normals": {"scale": float(config.normals_scale)}, "groups": {}}
    factories = teacher_factories(config, [s for s in TEACHER_STAGES if s in needed])
    problems = []  # ground truth the split lacks fails now (every such teacher named), not on every image later
    for s, factory in factories.items():
        problem = factory.cls.check_records(rec.to_record() for rec in records)
        if problem:
            problems.append(f"{s} teacher {teacher_choice(config, s)[0]!r}: {problem}")
    if problems:
        raise BuildError("; ".join(problems))
    vocab_path = None
    if "tokens" in needed:  # checked before the teachers load: a bad GloVe file or vocabulary fails fast
        derived["tokens"], vocab_path = tokens_params(config, store_root)
    if hold is not None:
        hold(split_path)
    changed: set[str] = set()
    if folder is None:
        shards = [shard_name(config.split, k) for k in range(max(1, -(-len(records) // config.shard_size)))]
        by_shard = {name: records[k * config.shard_size:(k + 1) * config.shard_size]  # records: sorted by image id
                    for k, name in enumerate(shards)}
    else:
        if hold is not None:  # under the lock: the map as the last build left it (another may have ended since)
            latest = read_id_map(split_path)
            if latest != id_map:
                folder = plan_folder(listing, latest)
                records = folder.records
        shards, by_shard = cut_by_id(config.split, records, folder.id_map.next_id, config.shard_size)
        digests = shard_digests(by_shard, folder.signatures)
        changed = {sh for sh in shards if folder.id_map.shards.get(sh) != digests[sh]}
        for line in folder.notes:
            _say(config, line)
        if folder.removed:
            _say(config, f"{len(folder.removed)} image(s) of the id map are gone from the folder (first: "
                         f"{folder.removed[0]}); their samples are dropped")
        if changed and config.stages and folder.id_map.shards:
            raise BuildError(f"{len(changed)} shard(s) of {config.split} changed in the folder since its last "
                             "build: build the whole split first (without --stages), so every column follows")
        if hold is not None:  # a build: the changed shards are written again in every column. The ids are kept
            # now (a key is never given twice); the digests only once every column holds them (see build.py)
            forget_shards(split_path, changed)
            write_id_map(split_path, folder.id_map)  # new ids, the old digests
            folder.id_map.shards = digests
        if folder.added or changed:
            _say(config, f"{len(folder.added)} new image(s); {len(changed)} of {len(shards)} shard(s) to build")
    if executor is not None and records:  # a cluster's nodes must see what this machine sees, at the same paths
        reads = [str(f.kwargs["checkpoint"]) for f in factories.values()
                 if isinstance(f.kwargs.get("checkpoint"), str) and os.path.exists(f.kwargs["checkpoint"])]
        reads += [config.glove] if "tokens" in needed and os.path.isfile(config.glove) else []
        image = next((r.path for r in records if os.path.isfile(r.path)), "")  # one the driver sees ("": none)
        try:
            problem = check_nodes(executor, image, split_path, reads)
        except ClusterConnectionError as e:
            raise BuildError(str(e)) from None
        if problem:
            raise BuildError(problem)
    settings = {s: teacher_settings(f) for s, f in factories.items()}  # read before loading: what was loaded
    recorded = recorded_fingerprints(split_path, settings) if reuse_recorded != "never" else {}
    if reuse_recorded == "when_done":  # a teacher is loaded unless its stage has nothing left to do at that version
        recorded = {s: fp for s, fp in recorded.items()
                    if not (config.force and s in chosen)
                    and _all_done(config, split_path, s, (teacher_choice(config, s)[0], fp), shards)}
    loaded = {s: f for s, f in factories.items() if s not in recorded}
    if loaded:  # weights can take minutes to load (and Ray actors to start)
        _say(config, "loading teachers: " + ", ".join(f"{s} {teacher_choice(config, s)[0]}" for s in loaded))
    teacher_fps = {**recorded, **load_teachers(config, loaded, executor if executor is not None else LocalExecutor())}
    teacher_ids = {s: (teacher_choice(config, s)[0], fp) for s, fp in teacher_fps.items()}
    source = None
    if config.images is not None:
        source = {"kind": "folder", "extensions": list(IMAGE_EXTENSIONS)}
    elif config.videos is not None:
        source = {"kind": "video", "extensions": list(VIDEO_EXTENSIONS), "frame_step": int(config.frame_step),
                  "fps": 0.0 if config.frame_step else float(config.video_fps)}
    specs = resolve_specs(config.size, config.shard_size, teacher_ids, derived, config.max_image_pixels, source)
    fps = {s: fingerprint(spec) for s, spec in specs.items()}

    try:
        active = dict(load_manifest(split_path).columns)
    except StoreError:
        active = {}
    run_stages = [s.name for s in STAGES  # with a folder whose shards changed, every needed stage has work
                  if s.name in chosen or (s.name in needed and (active.get(s.name) != fps[s.name] or changed))]

    pending: dict[str, set[str]] = {}
    for s in run_stages:
        if config.force and s in chosen:
            pending[s] = set(shards)
            continue
        done = ColumnWriter(split_path, s, fps[s]).done_shards(shards, threads=HASH_THREADS)
        pending[s] = {sh for sh in shards if sh not in done or sh in changed  # changed: a folder's files moved
                      or (s == "base" and not rejected_path(split_path, fps[s], sh).is_file())}
    if "tokens" in run_stages and vocab_path is None:
        existing = column_dir(split_path, "tokens", fps["tokens"]) / VOCAB_NAME
        if existing.is_file() and not (config.force and "tokens" in chosen):
            vocab_path = str(existing)
    return Plan(config, split_path, shards, by_shard, specs, fps, run_stages, pending, active,
                loaded, vocab_path, teacher_fps, sorted(recorded, key=TEACHER_STAGES.index), settings, dropped,
                removed_files=folder.removed if folder is not None else [],
                added_files=len(folder.added) if folder is not None else 0,
                id_map=folder.id_map if folder is not None else None,
                source_notes=list(folder.notes) if folder is not None else [])
