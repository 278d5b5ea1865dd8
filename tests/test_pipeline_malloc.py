"""glibc malloc tuning for build processes: applied where glibc is the allocator, never over the user's settings."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from pipeline import malloc


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="glibc only")
def test_thresholds_are_set_in_a_fresh_process() -> None:
    code = "import pipeline.units, pipeline.malloc as m; print(m.tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # importing the units module tuned the process


def test_the_users_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert malloc._set(32 << 20, 128 << 20) is False

