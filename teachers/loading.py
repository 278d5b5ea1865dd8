"""Shared loading helpers of the model teachers: optional imports, checkpoint identity, dtypes, load errors."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import re
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, TypeVar

from teachers.base import MissingExtraError, TeacherError, expand_home, sha256_of_path

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


#: What torch's safe unpickler (and detectron2's numpy-only one) says of a pickle that would run code or build
#: objects other than tensors: "Unsupported global: GLOBAL ...", "unsupported GLOBAL ... is blocked", ...
_PICKLED_CODE = re.compile(r"unsupported global|whose module \S+ is blocked|can only (create new object|build tensor)"
                           r"|refusing to unpickle", re.IGNORECASE)
_PICKLED_NAME = re.compile(r"(?:GLOBAL|refusing to unpickle) ([\w.]+)", re.IGNORECASE)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, prefixed with its type. A refused pickle is said
    plainly: torch's own message advises ``weights_only=False``, which would run whatever code the file holds."""
    text = str(exc)
    if _PICKLED_CODE.search(text):
        named = _PICKLED_NAME.search(text)
        return ("it holds pickled Python objects beyond weights and plain data, which safe loading does not build"
                + (f": {named[1]}" if named else "") + "; save a plain state dict or a safetensors file")
    if "weights only load failed" in text.lower():
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
        raise TeacherError(f"teacher {teacher!r}: cannot load checkpoint {checkpoint!r} "
                           f"({first_line(exc)})") from exc


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers while it loads: its warnings and load report (a checkpoint of another model prints
    100 lines and more before our one-line error) and its own progress bars ("Loading weights"); the Hugging Face
    hub's download bars stay. The previous verbosity and bar setting come back afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = getattr(hf_logging, "_tqdm_active", None)  # transformers' bars only: disable_progress_bar() would
    hf_logging.set_verbosity_error()                  # also hide the hub's (first download of a large model)
    if bars is not None:
        hf_logging._tqdm_active = False
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars is not None:
            hf_logging._tqdm_active = bars


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is a real bool; anything else ("no", 0, None) is a TeacherError naming the parameter."""
    if not isinstance(value, bool):
        raise TeacherError(f"{name} must be true or false, got {value!r}")
    return value


def check_vocabulary(teacher: str, tokenizer: Any, source: str, size: int, slack: int = 0) -> None:
    """TeacherError unless ``tokenizer`` has ``size`` tokens (within ``slack``), the vocabulary of the decoder
    it reads the ids of (a folder without its tokenizer files gives transformers a 1-token one: every caption
    empty). ``slack`` allows for an embedding padded to a round size, or a few added special tokens."""
    if abs(len(tokenizer) - size) > slack:
        raise TeacherError(f"teacher {teacher!r}: tokenizer {source!r} has {len(tokenizer)} tokens but the decoder "
                           f"has {size}")


def integer(name: str, value: Any, least: int) -> int:
    """``value`` as an int >= ``least``; a float, a string or a smaller number is a TeacherError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise TeacherError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def _shown(value: Any, limit: int = 60) -> str:
    """A short one-line ``repr`` of a value read from a file (an integer too long to print says its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - whatever a loaded value's repr does, the message stays one line
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _sized(value: Any, least: int, most: int) -> bool:
    """True for a real int (not a bool) in ``least..most``."""
    return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most


def sized_config(cls: type[T], fields: Any, limits: Mapping[str, tuple[int, ...]], *, teacher: str,
                 source: str) -> T:
    """``cls(**fields)`` for a dataclass of model sizes read from a file, every value checked first.

    A checkpoint's sizes are data: a file of a few kilobytes must not make the loader build a network of a
    hundred gigabytes, nor spend minutes constructing a million layers. Each field is a plain integer (not a
    bool, a float or a string) within its bound; a tuple field is a list or tuple of exactly that many such
    integers.

    Args:
        cls: the configuration dataclass.
        fields: the mapping read from the file (anything else is refused).
        limits: per field ``(least, most)``, or ``(least, most, length)`` for a tuple field; every field of
            ``cls`` has one.
        teacher: teacher name, for the message.
        source: the file the fields came from, for the message.

    Returns:
        The configuration; fields left out keep their defaults.

    Raises:
        TeacherError: one line naming the file and the first bad field.
    """
    where = f"teacher {teacher!r}: {source}:"
    if not isinstance(fields, dict):
        raise TeacherError(f"{where} its config is a {type(fields).__name__}, not a mapping of model sizes")
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in known:
            raise TeacherError(f"{where} unknown config field {_shown(name)} (known: {', '.join(sorted(known))})")
        least, most, *length = limits[name]
        if length:
            if not (isinstance(value, (list, tuple)) and len(value) == length[0]
                    and all(_sized(v, least, most) for v in value)):
                raise TeacherError(f"{where} config field {name!r} must be {length[0]} integers in {least}..{most}, "
                                   f"got {_shown(value)}")
            value = tuple(value)
        elif not _sized(value, least, most):
            raise TeacherError(f"{where} config field {name!r} must be an integer in {least}..{most}, "
                               f"got {_shown(value)}")
        values[name] = value
    return cls(**values)


def unit_interval(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1]; anything else (NaN included) is a TeacherError naming the parameter."""
    return _number_in(name, value, 1.0, "in [0, 1]")


def non_negative(name: str, value: Any) -> float:
    """``value`` as a finite float >= 0; anything else (NaN, a string) is a TeacherError naming the parameter."""
    return _number_in(name, value, float("inf"), ">= 0")


def _number_in(name: str, value: Any, most: float, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (0.0 <= number <= most and number != float("inf")):
        raise TeacherError(f"{name} must be a number {what}, got {value!r}")
    return number


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name`` ("float32" | "float16" | "bfloat16")."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def hub_revision(model: Any, revision: str | None) -> str | None:
    """The revision to fingerprint: the requested one, else the commit the hub cache resolved."""
    return revision or getattr(getattr(model, "config", None), "_commit_hash", None)


def _local_config(teacher: str, checkpoint: str, expected: str) -> None:
    """Check a local ``save_pretrained`` folder before transformers reads it: it is a folder, it has a
    ``config.json`` (else transformers would build the model of its default config) of the expected model type."""
    if os.path.isfile(checkpoint):
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint} is a file; pass the folder that holds "
                           "config.json and the weights (as save_pretrained writes it)")
    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
        raise TeacherError(f"teacher {teacher!r}: checkpoint folder {checkpoint} has no config.json")
    try:
        with open(path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise TeacherError(f"teacher {teacher!r}: cannot read {path} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if model_type is not None and model_type != expected:
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint!r} is a {model_type!r} model, "
                           f"not {expected!r}")


def from_pretrained_strict(model_class: Any, teacher: str, checkpoint: str, revision: str | None = None) -> Any:
    """``model_class.from_pretrained`` that refuses what transformers would only warn about, quietly.

    A local folder needs its ``config.json`` (of the right model type); transformers fills weights missing
    from a checkpoint with random values, and with ``ignore_mismatched_sizes`` mis-shaped ones too, with a
    warning; for a teacher that is a wrong checkpoint, so it is one TeacherError naming the first such weight.
    transformers' own report and warnings are silenced (``quiet_transformers``).
    """
    checkpoint = expand_home(checkpoint)
    expected = model_class.config_class.model_type
    if is_local(checkpoint):
        _local_config(teacher, checkpoint, expected)
    with quiet_transformers():
        model, info = load_or_fail(teacher, checkpoint, lambda: model_class.from_pretrained(
            checkpoint, revision=revision, output_loading_info=True, ignore_mismatched_sizes=True,
            trust_remote_code=False))  # explicit: a checkpoint's own code never runs, and nothing prompts
    if model.config.model_type != expected:
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint!r} is a {model.config.model_type!r} "
                           f"model, not {expected!r}")
    bad = sorted(map(str, info.get("missing_keys", ()))) + sorted(_key(k) for k in info.get("mismatched_keys", ()))
    if bad:
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint!r} does not fit {model_class.__name__} "
                           f"({len(bad)} missing or mis-shaped weights, e.g. {bad[0]})")
    return model


def _key(mismatched: Any) -> str:
    """The weight name of a ``mismatched_keys`` entry (a name, or a (name, shape in file, shape of model) tuple)."""
    return str(mismatched[0]) if isinstance(mismatched, (tuple, list)) and mismatched else str(mismatched)
