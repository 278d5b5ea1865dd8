"""Shared pytest fixtures: ``demo_root``, the demo COCO root built once per test session."""

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
