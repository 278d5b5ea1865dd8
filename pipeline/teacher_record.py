"""The build's record of its teachers' fingerprints, so that ``pipeline status`` need not load the models.

A teacher's fingerprint depends on its class, its constructor keywords (except the device and the batch size,
which ``Teacher.fingerprint`` leaves out) and the weights those keywords name. Every build records in
``<split>/teachers.json`` the fingerprint of each teacher it loaded, next to its *settings*, read before the
teachers load: the teacher's class, the sha256 of the ``teachers`` package's sources, the versions of the
packages that shape outputs (torch, transformers, detectron2, rapidocr, ...), its keywords, the size and
modification time of every local file or folder a keyword or the default checkpoint names (of a folder, the
files its fingerprint hashes), and the commit that the local Hugging Face cache resolves for a hub id (the
default checkpoint, ``Teacher.default_checkpoint``, when none is given; short names through
``Teacher.resolve_checkpoint``).
``pipeline status`` takes a recorded fingerprint when the settings of the user's teacher (from the user's flags
and ``--config`` file, never from the store) are exactly those, and otherwise reports that teacher's stage as
unconfirmed without loading it; ``--recheck`` loads every teacher of the user's settings. What the settings
cannot see: a hub model that a new download would update (only the local cache is read), a file replaced by one
of the same size and modification time (``cp -p``, ``rsync -a``), and the base files a local detectron2 YAML
names in ``_BASE_``; ``--recheck`` covers them.

The file is a cache of data, never of settings: it only says which fingerprint goes with which settings, and
status compares the user's settings with it (a forged entry can make status report a wrong version, never make
it load or run anything). Deleting it only makes the next ``pipeline status`` report the teachers unconfirmed.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from shards.atomic import atomic_write_json
from shards.schema import TEACHER_RECORD_NAME

if TYPE_CHECKING:
    from pipeline.executors import TeacherFactory

log = logging.getLogger(__name__)

#: Constructor keywords that ``Teacher.fingerprint`` leaves out: they change where and how fast, not what.
NOT_IN_FINGERPRINT = ("device", "batch_size")
_KEEP = 64  # recorded settings kept (newest first); a build appends at most one per teacher stage
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _path_state(path: str) -> list[Any]:
    """Size and modification time of a file, or of each of the files a folder's fingerprint hashes
    (``teachers.base.model_files``, with their relative names)."""
    from teachers.base import model_files

    if os.path.isdir(path):
        return [[rel, *_path_state(os.path.join(path, rel))] for rel in model_files(path)]
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _hub_ref(model_id: str, revision: Any) -> str | None:
    """The commit the local Hugging Face cache resolves for ``model_id`` at ``revision`` (None: not cached)."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}" / "refs" / str(revision or "main")
    try:
        return ref.read_text().strip()
    except OSError:
        return None


#: Installed packages whose code shapes a teacher's output (model code, default configs, post-processing).
PACKAGES = ("torch", "torchvision", "transformers", "detectron2", "onnxruntime", "rapidocr", "numpy", "opencv-python",
            "opencv-python-headless", "pillow")


def _code_sha256(cls: type) -> str | None:
    """sha256 of the source files of ``cls`` and the teacher classes it derives from and of every module of the
    ``teachers`` package (model ports and default configs live beside the teacher classes); None when a source
    cannot be read (a class defined in a notebook)."""
    import teachers

    files = [Path(f) for f in sorted(Path(teachers.__file__).parent.glob("*.py"))]
    for c in cls.__mro__:
        if c.__module__ not in ("builtins", "abc"):
            try:
                source = inspect.getsourcefile(importlib.import_module(c.__module__))
                files.append(Path(source))  # type: ignore[arg-type]
            except (ImportError, TypeError):
                return None
    h = hashlib.sha256()
    for path in dict.fromkeys(files):
        h.update(path.read_bytes())
    return h.hexdigest()


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # sources on the path without package metadata (detectron2 built from git)
            found[name] = _source_version(name)
    return found


def _source_version(module: str) -> str | None:
    """The ``__version__`` an importable package's ``__init__.py`` assigns, read without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module) if module.isidentifier() else None
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith("__init__.py"):
        return None
    try:
        match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", Path(spec.origin).read_text(), re.M)
    except OSError:
        return None
    return match.group(1) if match else None


def teacher_settings(factory: "TeacherFactory") -> dict[str, Any] | None:
    """What a teacher's fingerprint is a function of, read without loading it (see the module docstring);
    None when it cannot be told (its source is not a file, a file it names cannot be read)."""
    cls = factory.cls
    try:
        code = _code_sha256(cls)
        if code is None:
            return None
        kwargs = {k: v for k, v in factory.kwargs.items() if k not in NOT_IN_FINGERPRINT}
        named = dict(kwargs)
        if named.get("checkpoint") is None and hasattr(cls, "default_checkpoint"):  # the weights it loads then
            named["checkpoint"] = cls.default_checkpoint()
        if isinstance(named.get("checkpoint"), str) and hasattr(cls, "resolve_checkpoint"):  # short names
            named["checkpoint"] = cls.resolve_checkpoint(named["checkpoint"])
        files: dict[str, Any] = {}
        for key, value in sorted(named.items()):
            if not isinstance(value, str) or not value:
                continue
            path = os.path.expanduser(value)
            if os.path.exists(path):
                files[key] = _path_state(path)
            elif _HUB_ID.fullmatch(value):
                files[key] = _hub_ref(value, kwargs.get("revision"))
    except OSError:  # a dangling link, an unreadable file: no record, status loads the teacher
        return None
    settings = {"teacher": getattr(cls, "name", cls.__name__), "class": f"{cls.__module__}.{cls.__qualname__}",
                "code_sha256": code, "packages": _versions(), "kwargs": kwargs, "files": files}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))  # as it reads back from the file


def _read(split_path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads((split_path / TEACHER_RECORD_NAME).read_text())["teachers"]
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: a cache, so nothing is known
        return []
    return [e for e in entries if isinstance(e, dict) and {"stage", "settings", "fingerprint"} <= set(e)]


def recorded_fingerprints(split_path: Path, settings: Mapping[str, dict[str, Any] | None]) -> dict[str, str]:
    """stage -> the fingerprint a build recorded for exactly ``settings[stage]`` (``teacher_settings``)."""
    entries = _read(split_path)
    found = {}
    for stage, wanted in settings.items():
        if wanted is None:
            continue
        for e in entries:
            if e["stage"] == stage and e["settings"] == wanted:
                found[stage] = str(e["fingerprint"])
                break
    return found


def record_fingerprints(split_path: Path, settings: Mapping[str, dict[str, Any] | None],
                        fps: Mapping[str, str]) -> None:
    """Add the loaded teachers' fingerprints with their settings (read before they loaded) to
    ``<split>/teachers.json``, newest first. A record that cannot be written is only a warning: the next status
    loads the teachers."""
    new = [{"stage": stage, "settings": wanted, "fingerprint": fps[stage]}
           for stage, wanted in settings.items() if wanted is not None and stage in fps]
    if not new:
        return
    before = _read(split_path)
    old = [e for e in before if not any(e["stage"] == n["stage"] and e["settings"] == n["settings"] for n in new)]
    entries = (new + old)[:_KEEP]
    if entries == before:  # a re-run of the same build leaves the file as it is
        return
    try:
        split_path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(split_path / TEACHER_RECORD_NAME, {"teachers": entries})
    except OSError as e:
        log.warning("cannot record the teachers' fingerprints in %s (%s)", split_path / TEACHER_RECORD_NAME, e)
