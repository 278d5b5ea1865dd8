"""The processes a build starts, and that they end with it: ``descendants`` lists what runs below a process, and
``fate_share`` has a watchdog end them once the process is gone, however it ends (Linux ``/proc``; elsewhere
nothing)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from typing import Sequence


def start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): with the pid, it names that process and no later one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every process below ``pid`` (Linux /proc; elsewhere none)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        start = start_time(p)
        if start is not None:
            found.append((p, start))
        todo += children.get(p, [])
    return found


#: run by a process of its own: waits for the driver to end, then ends the processes it was given (the local Ray
#: cluster's GCS, raylet, monitors and agents), those whose start time shows they are still the same processes
_WATCHDOG = "import os, signal, sys, time, json\n" + inspect.getsource(start_time) + r"""
driver, start, procs = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
while start_time(driver) == start:
    time.sleep(1.0)
for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p, s in procs if start_time(p) == s]
    for p in alive:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    if not alive:
        break
    time.sleep(2.0)
"""


def fate_share(procs: Sequence[tuple[int, str]]) -> None:
    """Have ``procs`` ended when this process ends, however it ends: Ray's own fate sharing leaves a local
    cluster's dashboard and runtime-env agents running, orphaned, after a driver is killed with SIGKILL. A small
    watchdog process of its own session waits for this one and ends them (Linux; elsewhere nothing)."""
    start = start_time(os.getpid())
    if start is None or not procs:
        return
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), start, json.dumps(list(procs))],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)
