"""The package boundaries of DESIGN section 1, checked on the source (static) and at import time (dynamic)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "teachers", "pipeline", "student")
ALLOWED = {
    "shards": set(),
    "teachers": {"shards"},
    "pipeline": {"teachers", "shards"},
    "student": {"shards"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_allowed_project_packages(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    for path in files:
        used = _imports(path) & set(PACKAGES) - {package}
        bad = used - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; DESIGN 1 forbids it"


@pytest.mark.parametrize("package", PACKAGES)
def test_only_pipeline_imports_ray(package: str) -> None:
    if package == "pipeline":
        return
    for path in sorted((ROOT / package).rglob("*.py")):
        assert "ray" not in _imports(path), f"{path.relative_to(ROOT)} imports ray; only pipeline may"


@pytest.mark.parametrize(("package", "forbidden"), [
    ("shards", ("torch", "ray", "teachers", "pipeline", "student")),
    ("teachers", ("torch", "ray", "transformers", "detectron2", "rapidocr", "pipeline", "student")),
    ("student", ("ray", "teachers", "pipeline")),
])
def test_import_is_cheap(package: str, forbidden: tuple[str, ...]) -> None:
    code = (f"import sys, {package}; "
            f"print(','.join(m for m in {forbidden!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {package} pulled in {out.stdout.strip()}"
