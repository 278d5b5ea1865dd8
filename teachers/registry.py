"""Teacher registry: ``create_teacher(name, **kw)``, ``list_teachers()``; modules load only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from teachers.base import Teacher, TeacherError

# name -> "module:Class". Kept as strings so that ``import teachers`` imports no model library.
_TEACHERS: dict[str, str] = {}


def register_teacher(name: str, target: str) -> None:
    """Register ``target`` ("package.module:Class") under ``name`` (plugins may add their own)."""
    _TEACHERS[name] = target


def list_teachers(task: str | None = None) -> list[str]:
    """Registered teacher names, optionally only those of one task."""
    names = sorted(_TEACHERS)
    if task is not None:
        names = [n for n in names if teacher_class(n).spec.task == task]
    return names


def teacher_class(name: str) -> type[Teacher]:
    """The class registered under ``name``; an unknown name lists the valid ones."""
    if name not in _TEACHERS:
        raise TeacherError(f"unknown teacher {name!r}; teachers are: {', '.join(sorted(_TEACHERS))}")
    module, _, cls = _TEACHERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_teacher(name: str, **kwargs: Any) -> Teacher:
    """Build the teacher ``name`` with keyword arguments (device, dtype, batch_size, checkpoint, ...)."""
    return teacher_class(name)(**kwargs)
