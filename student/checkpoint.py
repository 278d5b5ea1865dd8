"""Student checkpoints: the model's weights and config plus training state, written atomically, loaded safely.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only (``model``, ``model_cfg`` and
whatever extra the trainer adds: optimiser state, train config, epoch, step, loader position, metrics), so
``torch.load(weights_only=True)`` reads it without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from shards.atomic import atomic_file
from student.config import ModelConfig
from student.model import YMapNet


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not a student checkpoint; the message names the file."""


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, cfg: ModelConfig, **extra: Any) -> None:
    """Write ``{"model": state_dict, "model_cfg": cfg, **extra}`` atomically (temporary file + rename).

    Args:
        path: destination file (``.pt``).
        model: the network (a DDP wrapper is unwrapped).
        cfg: its configuration.
        **extra: tensors, state dicts and plain values (numbers, strings, lists, dicts) only.
    """
    model = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"model": state, "model_cfg": cfg.to_dict(), **extra}
    with atomic_file(path) as f:
        torch.save(payload, f)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file's dict with ``torch.load(weights_only=True)``; faults are one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for damaged, foreign or unsafe files
        raise CheckpointError(f"{path}: cannot load checkpoint (not a PyTorch checkpoint written by "
                              f"`student train`, or damaged: {type(e).__name__})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a student checkpoint (holds a {type(payload).__name__}, not a dict)")
    return payload


def saved_model_config(saved: Any, path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig a checkpoint saved; a malformed one is a CheckpointError naming the file."""
    try:
        if not isinstance(saved, dict):
            raise ValueError(f"a {type(saved).__name__}, not a dict")
        return ModelConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model_cfg is not a valid model config ({e})") from None


def check_fits(cfg: ModelConfig, state: Any, path: str | os.PathLike) -> None:
    """Raise a CheckpointError unless the tensors of ``state`` have exactly the shapes of the network ``cfg``
    describes, comparing with a network built on the meta device (no memory): a checkpoint's config is data, and
    must not make the loader allocate a network its own weights do not fill."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its model entry is a {type(state).__name__}, not a state dict")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in YMapNet(cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    for key, shape in expected.items():
        if got.get(key) != shape:
            raise CheckpointError(f"{path}: weights do not match the saved config ({key}: the config asks for "
                                  f"{list(shape)}, the weights hold {list(got[key]) if key in got else 'none'})")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: weights do not match the saved config (unexpected {extra[0]})")


def load_problem(error: BaseException, limit: int = 200) -> str:
    """The first useful line of a ``load_state_dict`` error, at most ``limit`` characters.

    torch's message opens with a header (``Error(s) in loading state_dict for YMapNet:``) and then lists
    every problem on its own line (``size mismatch for X: ...``, ``Missing key(s) in state_dict: ...``);
    this keeps the first problem and says how many more there are.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines if not line.startswith("Error(s) in loading state_dict")]
    text = details[0] if details else (lines[0] if lines else type(error).__name__)
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + "..."
    return text + (f" (and {len(details) - 1} more)" if len(details) > 1 else "")


def load_weights(model: torch.nn.Module, state: Any, path: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``; weights that do not fit are one CheckpointError line naming the file."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not match the saved config ({load_problem(e)})") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[YMapNet, ModelConfig, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Args:
        path: the ``.pt`` file.
        map_location: device for the tensors.

    Returns:
        (model with the weights loaded, in eval mode, its ModelConfig, the remaining entries).

    Raises:
        CheckpointError: the file is missing, unreadable, or lacks the model / config entries.
    """
    payload = read_checkpoint(path, map_location)
    if "model" not in payload or "model_cfg" not in payload:
        raise CheckpointError(f"{path}: not a student checkpoint (needs 'model' and 'model_cfg' entries)")
    cfg = saved_model_config(payload.pop("model_cfg"), path)
    state = payload.pop("model")
    check_fits(cfg, state, path)
    model = YMapNet(cfg)
    load_weights(model, state, path)
    model.to(map_location)
    model.eval()
    return model, cfg, payload
