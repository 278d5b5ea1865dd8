"""What every node of a Ray cluster must see before a build starts.

The driver checks its inputs on its own machine; the units run on the cluster's nodes, which read the split's
images, the teachers' local weight files and the GloVe file, and write the store, all at the same paths. A node
that lacks one of them would reject every image as missing, write shards the driver never sees, or fail every
unit after hours; one whose Python path holds another copy of this project would compute other fingerprints
and outputs. ``probe`` runs on each node (one task per node, before any teacher loads) and says what it lacks;
``check_nodes`` turns the answers into one line.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGES = ("pipeline", "shards", "teachers")


def code_digest() -> str:
    """sha256 of the Python sources of this project's packages as this process imports them."""
    import importlib

    h = hashlib.sha256()
    for name in PACKAGES:
        root = Path(importlib.import_module(name).__file__).parent  # type: ignore[arg-type]
        for path in _package_sources(root):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _package_sources(folder: Path) -> list[Path]:
    """The ``.py`` files of a package and of its subpackages (folders holding ``__init__.py``), sorted; other
    folders are not entered (a store written under ``shards/`` by the default ``--out`` holds thousands)."""
    files = sorted(folder.glob("*.py"))
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and (d / "__init__.py").is_file()):
        files += _package_sources(sub)
    return files


@dataclass(frozen=True)
class NodeCheck:
    """What a node must see: one image of the split, the store's split folder (written to), the local files the
    units read, and the driver's ``code_digest``."""

    image: str
    store_split: str
    files: tuple[str, ...]
    code: str
    token: str


def probe(check: NodeCheck, index: int) -> tuple[str, list[str]]:
    """Run on one node: (its host name, what it lacks). Leaves ``.node-check-<token>-<index>`` in the store's
    split folder for the driver to find."""
    host = socket.gethostname()
    problems = []
    if check.image and not os.path.isfile(check.image):
        problems.append(f"no image {check.image}")
    try:
        os.makedirs(check.store_split, exist_ok=True)
        Path(check.store_split, f".node-check-{check.token}-{index}").write_text(host)
    except OSError as e:
        problems.append(f"cannot write the store folder {check.store_split} ({e.strerror or e})")
    problems += [f"no {f}" for f in check.files if not os.path.exists(f)]
    if code_digest() != check.code:
        problems.append("its Python imports other code of this project than the driver (another checkout or "
                        "version on its path: start the driver outside a source folder, or install one version)")
    return host, problems


def check_nodes(executor: Any, image: str, store_split: Path, files: list[str]) -> str | None:
    """Probe every node of ``executor``'s cluster; None when all see everything, else one line naming the nodes
    and what they lack. Executors without nodes of their own (in-process) are not probed."""
    check = NodeCheck(image, str(store_split), tuple(files), code_digest(), uuid.uuid4().hex[:12])
    made = [d for d in (store_split, *store_split.parents) if not d.exists()]  # the probes create them
    try:
        return _collect(executor.on_every_node(probe, check), check, store_split)
    finally:  # the check leaves nothing behind here, even when stopped: a build refused now has written nothing
        for sentinel in store_split.glob(f".node-check-{check.token}-*"):
            sentinel.unlink(missing_ok=True)
        for d in made:
            try:
                d.rmdir()
            except OSError:  # not empty, or never made
                break


def _collect(answers: list[Any] | None, check: NodeCheck, store_split: Path) -> str | None:
    if answers is None:
        return None
    problems = []
    for index, answer in enumerate(answers):
        if isinstance(answer, BaseException):
            cause = getattr(answer, "cause", None) or answer  # a task's own exception, not Ray's wrapper text
            first = (str(cause).strip().splitlines() or [""])[0]
            problems.append(f"node {index}: did not answer ({type(cause).__name__}: {first[:200]})")
            continue
        host, lacks = answer
        sentinel = store_split / f".node-check-{check.token}-{index}"
        if not any("store folder" in p for p in lacks) and not sentinel.is_file():
            lacks.append(f"writes to a store folder {store_split} that the driver does not see")
        if lacks:
            problems.append(f"node {host}: " + "; ".join(lacks))
    if not problems:
        return None
    paths = any(" no " in p or "store folder" in p for p in problems)
    return ("not every node of the Ray cluster can run this build as the driver sees it"
            + (" (the COCO root, the store and local weight files must be on storage every node mounts at the "
               "driver's paths)" if paths else "") + ": " + " | ".join(problems))
