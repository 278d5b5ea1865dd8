"""Shared pytest fixtures: ``demo_root`` (the demo COCO root, built once per test session), ``fakes`` and
``tiny_checkpoint``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built demo COCO root (``pipeline.demo.make_demo``); treat it as read-only."""
    from pipeline.demo import make_demo

    return make_demo(tmp_path_factory.mktemp("demo") / "coco")


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The identity-cost fake teachers of ``pipeline_fakes`` in the registry; returns their call counter."""
    import pipeline_fakes

    return pipeline_fakes.register_for_test(monkeypatch)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random student (seed 0, 64x64 input) saved as a checkpoint file; its path."""
    import torch

    from student.checkpoint import save_checkpoint
    from student.config import ModelConfig
    from student.model import YMapNet

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(image_size=64)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, YMapNet(cfg), cfg)
    return str(path)
