"""Safe checkpoint reading, the check that a checkpoint's sizes fit its tensors before a model is built, and strict
state-dict loading; one clear error per problem."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from teachers.base import TeacherError
from teachers.loading import first_line


def safe_torch_load(path: str) -> Any:
    """``torch.load(weights_only=True)`` on the CPU that also admits an ``argparse.Namespace`` (the arguments a
    training script often saves beside its weights: built from plain attributes, it runs nothing). numpy data stays
    refused: its dtype state is not validated by numpy, so admitting it would let a file make numpy read raw bytes
    as object pointers."""
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _existing_file(path: str | os.PathLike, teacher: str) -> str:
    """``path`` with ``~`` expanded; a folder or a missing file is a TeacherError."""
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        raise TeacherError(f"teacher {teacher!r}: checkpoint {path} is a folder; pass the .pth file")
    if not os.path.isfile(path):
        raise TeacherError(f"teacher {teacher!r}: checkpoint {path} does not exist")
    return path


def read_checkpoint(path: str | os.PathLike, teacher: str) -> dict[str, Any]:
    """Read a ``.safetensors`` file or a torch file with ``safe_torch_load`` (never unpickles code).

    Args:
        path: the weights file.
        teacher: teacher name for the error message.

    Returns:
        The loaded object (a dict).
    """
    path = _existing_file(path, teacher)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        obj = safe_torch_load(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one user-facing line
        raise TeacherError(f"teacher {teacher!r}: cannot read checkpoint {path}: {first_line(exc)}") from None
    if not isinstance(obj, dict):
        raise TeacherError(f"teacher {teacher!r}: checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


#: A model may need at most this many bytes per byte of data its checkpoint holds: float32 weights read from a
#: file of one-byte values (half precision needs 2). A checkpoint of small tensors can thus never make the
#: loader allocate a model much larger than the file.
WIDEN = 4


@dataclass(frozen=True)
class Layout:
    """What a checkpoint holds, read without building anything.

    Attributes:
        shapes: each name's tensor shape, or the type name of a value that is no tensor.
        held_bytes: bytes of data behind all the tensors (each storage once).
        thin: the first name whose tensor shows more values than its data holds (a broadcast view), if any.
        odd: the first name whose tensor is not plain CPU data (a meta or sparse tensor), with what it is.
    """

    shapes: dict[str, tuple[int, ...] | str]
    held_bytes: int
    thin: str | None = None
    odd: tuple[str, str] | None = None


def tensor_layout(state: Mapping[str, Any]) -> Layout:
    """The ``Layout`` of a loaded state dict: a tensor's data is its storage's bytes (counted once however many
    names view it), never its shape, which a stride-0 view can make as large as it likes."""
    shapes: dict[str, tuple[int, ...] | str] = {}
    storages: dict[int, int] = {}
    thin: str | None = None
    odd: tuple[str, str] | None = None
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            shapes[key] = type(value).__name__
            continue
        shapes[key] = tuple(value.shape)
        if value.device.type != "cpu" or value.layout != torch.strided:  # a meta tensor claims storage it lacks
            kind = value.device.type if value.device.type != "cpu" else str(value.layout).removeprefix("torch.")
            odd = odd or (key, f"a {kind} tensor")
            continue
        storage = value.untyped_storage()
        if storage.nbytes():
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        if thin is None and value.numel() * value.element_size() > storage.nbytes():
            thin = key
    return Layout(shapes, sum(storages.values()), thin, odd)


def safetensors_layout(path: str | os.PathLike, teacher: str) -> Layout:
    """The ``Layout`` of a ``.safetensors`` file from its header alone (no tensor is read). The format stores
    every tensor's values once, back to back, so the file's size bounds the data behind the shapes."""
    path = _existing_file(path, teacher)
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            shapes: dict[str, tuple[int, ...] | str] = {k: tuple(f.get_slice(k).get_shape())
                                                       for k in f.keys()}  # noqa: SIM118 - no __iter__
    except Exception as exc:  # noqa: BLE001 - any reader failure is one user-facing line
        raise TeacherError(f"teacher {teacher!r}: cannot read checkpoint {path}: {first_line(exc)}") from None
    return Layout(shapes, os.path.getsize(path))


def _expected(model: nn.Module, prefix: str) -> tuple[dict[str, tuple[int, ...]], list[list[str]], int]:
    """A model's state-dict shapes (each name under ``prefix``), its groups of tied names (one tensor under two
    or more names, sorted) and the bytes its distinct tensors take. Ties are found by identity, which holds on
    the meta device too (where every storage pointer is 0)."""
    tensors = model.state_dict(keep_vars=True)
    shapes = {prefix + k: tuple(v.shape) for k, v in tensors.items()}
    by_id: dict[int, list[str]] = {}
    for key, value in tensors.items():
        by_id.setdefault(id(value), []).append(prefix + key)
    distinct = {id(v): v for v in tensors.values()}.values()
    nbytes = sum(v.numel() * v.element_size() for v in distinct)
    return shapes, [sorted(keys) for keys in by_id.values() if len(keys) > 1], nbytes


def _problems(expected: Mapping[str, tuple[int, ...]], tied: list[list[str]],
              got: Mapping[str, tuple[int, ...] | str]) -> list[str]:
    """What keeps shapes ``got`` (a type name for a value that is no tensor) from being ``expected``: the first
    missing key, the first unexpected key, else the first key of another shape. A tied group may be saved under
    one of its names only."""
    got = dict(got)
    for keys in tied:
        present = [k for k in keys if k in got]
        for key in keys:
            if present and key not in got:
                got[key] = got[present[0]]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        problems.append(f"unexpected key {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    if not problems:
        for key, ref in expected.items():
            if got[key] != tuple(ref):
                problems.append(f"key {key!r} has shape {got[key]}, the model needs {tuple(ref)}")
                break
    return problems


def check_fits(build: Callable[[], nn.Module], layout: Layout, *, prefix: str, source: str, teacher: str) -> None:
    """Check, before any real memory is spent on the model, that the model ``build()`` makes is the one the
    checkpoint's tensors fill: the model is built on the meta device (shapes, no data) and compared with the
    checkpoint's names and shapes; then the bytes it would take must be at most ``WIDEN`` times the data the
    checkpoint holds (so broadcast views cannot stand in for weights). The sizes were read from the same
    untrusted file, so they are bounded first (``teachers.loading.sized_config``): the meta build stays cheap.

    Args:
        build: makes the model of the checkpoint's sizes (called once here, under ``torch.device("meta")``).
        layout: ``tensor_layout`` of the loaded state dict or ``safetensors_layout`` of the file.
        prefix: prefix every checkpoint key carries ("" for none).
        source: checkpoint path, for the message.
        teacher: teacher name, for the message.

    Raises:
        TeacherError: one line naming the checkpoint and the first tensor that does not fit.
    """
    where = f"teacher {teacher!r}: checkpoint {source}"
    if layout.odd is not None:
        raise TeacherError(f"{where}: key {layout.odd[0]!r} is {layout.odd[1]}, not weights")
    try:
        with torch.device("meta"):
            shell = build()
    except (ValueError, AssertionError, RuntimeError, TypeError, ZeroDivisionError, OverflowError) as exc:
        raise TeacherError(f"{where}: its sizes describe no model that can be built ({first_line(exc)})") from None
    expected, tied, needed = _expected(shell, prefix)
    problems = _problems(expected, tied, layout.shapes)
    if problems:
        raise TeacherError(f"{where} does not match the model its sizes describe: " + "; ".join(problems))
    if needed > WIDEN * layout.held_bytes:
        how = (f"{layout.thin!r} shows more values than its data holds" if layout.thin
               else "its tensors share their data")
        raise TeacherError(f"{where}: its tensors hold {layout.held_bytes} bytes of data, too little for the "
                           f"{needed} bytes of the model their shapes describe ({how})")


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], *, prefix: str, source: str,
                teacher: str) -> None:
    """Load ``state`` into ``model`` requiring exactly the model's keys (each under ``prefix``) and shapes.

    Args:
        model: the module to fill.
        state: the checkpoint's state dict.
        prefix: prefix every checkpoint key carries ("" for none).
        source: checkpoint path, for the error message.
        teacher: teacher name, for the error message.
    """
    expected, tied, _ = _expected(model, prefix)
    problems = _problems(expected, tied, tensor_layout(state).shapes)
    if problems:
        raise TeacherError(f"teacher {teacher!r}: checkpoint {source} does not match the model: "
                           + "; ".join(problems))
    state = dict(state)
    for keys in tied:  # tied weights saved once (safetensors' save_model keeps either one)
        present = [k for k in keys if k in state]
        for key in keys:
            if key not in state:
                state[key] = state[present[0]]
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items()}, strict=True)
