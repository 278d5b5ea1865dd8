"""Safe checkpoint reading and strict state-dict loading with one clear error per problem."""

from __future__ import annotations

import os
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


def read_checkpoint(path: str | os.PathLike, teacher: str) -> dict[str, Any]:
    """Read a ``.safetensors`` file or a torch file with ``safe_torch_load`` (never unpickles code).

    Args:
        path: the weights file.
        teacher: teacher name for the error message.

    Returns:
        The loaded object (a dict).
    """
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        raise TeacherError(f"teacher {teacher!r}: checkpoint {path} is a folder; pass the .pth file")
    if not os.path.isfile(path):
        raise TeacherError(f"teacher {teacher!r}: checkpoint {path} does not exist")
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


def _tied(tensors: dict[str, torch.Tensor]) -> list[list[str]]:
    """Groups of two or more keys whose tensors are one (tied weights: the same storage, offset, shape and
    strides), each sorted."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for key in sorted(tensors):
        t = tensors[key]
        if t.numel() == 0:  # empty tensors share no data worth tying
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        groups.setdefault(ident, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


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
    expected = {prefix + k: v for k, v in model.state_dict().items()}
    state = dict(state)
    for keys in _tied(expected):  # tied weights saved once (safetensors' save_model keeps either one)
        present = [k for k in keys if k in state]
        for key in keys:
            if present and key not in state:
                state[key] = state[present[0]]
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        problems.append(f"unexpected key {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    if not problems:
        for key, ref in expected.items():
            got = state[key]
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(ref.shape):
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                problems.append(f"key {key!r} has shape {shape}, the model needs {tuple(ref.shape)}")
                break
    if problems:
        raise TeacherError(f"teacher {teacher!r}: checkpoint {source} does not match the model: "
                           + "; ".join(problems))
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items()}, strict=True)
