"""Tiny random checkpoints of every teacher, in the teacher's real format, for tests, demos and benchmarks."""

from __future__ import annotations

import importlib
import os

from teachers.registry import teacher_module


def save_tiny_checkpoint(teacher_name: str, out_dir: str | os.PathLike, seed: int = 0) -> str | None:
    """Write a tiny random model of ``teacher_name`` into ``out_dir`` in that teacher's checkpoint format.

    The teacher's module provides ``save_tiny_checkpoint(out_dir, seed=0) -> str``; this dispatches to it.

    Args:
        teacher_name: a registered teacher name (see ``list_teachers()``).
        out_dir: folder to write into (created if missing).
        seed: torch seed of the random weights (same seed, same bytes).

    Returns:
        What to pass as the teacher's ``checkpoint=`` argument, or None for teachers that take no
        checkpoint (the ground-truth teachers).
    """
    module = importlib.import_module(teacher_module(teacher_name))
    save = getattr(module, "save_tiny_checkpoint", None)
    if save is None:
        return None
    os.makedirs(out_dir, exist_ok=True)
    return str(save(str(out_dir), seed=seed))
