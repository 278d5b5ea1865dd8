"""Shared loading helpers of the model teachers: optional imports, checkpoint identity, dtypes, load errors."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, Callable, TypeVar

from teachers.base import MissingExtraError, TeacherError, sha256_of_path

T = TypeVar("T")


def require(module: str, teacher: str, extra: str) -> ModuleType:
    """Import ``module`` or raise MissingExtraError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(teacher, module.split(".")[0], extra) from exc


def is_local(checkpoint: str) -> bool:
    """True when ``checkpoint`` names an existing file or folder (else a hub id or URL)."""
    return os.path.exists(os.path.expanduser(str(checkpoint)))


def checkpoint_identity(checkpoint: str, revision: str | None = None) -> dict[str, Any]:
    """Fingerprint part of a checkpoint: weights sha256 for local files/folders, id + revision otherwise.

    Args:
        checkpoint: a local file or folder, a hub model id or a URL.
        revision: the hub revision (branch, tag or commit) the weights came from, if known.

    Returns:
        {"weights_sha256": ...} or {"model_id": ..., "revision": ...}.
    """
    if is_local(checkpoint):
        return {"weights_sha256": sha256_of_path(os.path.expanduser(str(checkpoint)))}
    return {"model_id": str(checkpoint), "revision": revision or "unpinned"}


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, prefixed with its type. torch's refusal of a pickle
    that holds more than tensors is said plainly: its own message advises ``weights_only=False``, which would
    run whatever code the file holds."""
    text = str(exc)
    if "Weights only load failed" in text:
        if "Unsupported global" in text:
            return ("it holds pickled Python objects besides tensors, which safe loading (weights_only=True) "
                    "refuses to run; use a plain state-dict or safetensors file")
        return "not a PyTorch weights file, or a damaged one (safe loading cannot parse it)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def looks_like_path(checkpoint: str) -> bool:
    """True for what can only be a local path (hub ids are ``name`` or ``org/name``; URLs carry ``://``)."""
    text = str(checkpoint)
    if "://" in text:
        return False
    return (text.startswith(("/", "./", "../", "~")) or text.count("/") > 1
            or text.endswith((".pt", ".pth", ".pkl", ".bin", ".safetensors", ".onnx", ".yaml")))


def load_or_fail(teacher: str, checkpoint: str, load: Callable[[], T]) -> T:
    """Run ``load()``; any failure becomes one TeacherError line naming the teacher and checkpoint.

    A checkpoint that can only be a local path and does not exist fails at once, before a hub
    download would be tried (and retried) under that name.
    """
    if checkpoint is not None and not is_local(checkpoint) and looks_like_path(checkpoint):
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint!r} is no such file or folder")
    try:
        return load()
    except TeacherError:
        raise
    except Exception as exc:  # noqa: BLE001 - every loader failure is reported the same way
        raise TeacherError(f"teacher {teacher!r} cannot load checkpoint {checkpoint!r} "
                           f"({first_line(exc)})") from exc


def integer(name: str, value: Any, least: int) -> int:
    """``value`` as an int >= ``least``; a float, a string or a smaller number is a TeacherError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise TeacherError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def unit_interval(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1]; anything else (NaN included) is a TeacherError naming the parameter."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise TeacherError(f"{name} must be a number in [0, 1], got {value!r}")
    return number


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name`` ("float32" | "float16" | "bfloat16")."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def hub_revision(model: Any, revision: str | None) -> str | None:
    """The revision to fingerprint: the requested one, else the commit the hub cache resolved."""
    return revision or getattr(getattr(model, "config", None), "_commit_hash", None)


def from_pretrained_strict(model_class: Any, teacher: str, checkpoint: str, revision: str | None = None) -> Any:
    """``model_class.from_pretrained`` that refuses what transformers would only warn about.

    transformers fills weights missing from a checkpoint (or a checkpoint of another architecture) with
    random values and a warning; for a teacher that is a wrong checkpoint, so it is one TeacherError.
    """
    model, info = load_or_fail(teacher, checkpoint, lambda: model_class.from_pretrained(
        checkpoint, revision=revision, output_loading_info=True))
    expected = model_class.config_class.model_type
    if model.config.model_type != expected:
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint!r} is a {model.config.model_type!r} "
                           f"model, not {expected!r}")
    bad = sorted(map(str, info.get("missing_keys", ()))) + sorted(map(str, info.get("mismatched_keys", ())))
    if bad:
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint!r} does not fit {model_class.__name__} "
                           f"({len(bad)} missing or mis-shaped weights, e.g. {bad[0]})")
    return model
