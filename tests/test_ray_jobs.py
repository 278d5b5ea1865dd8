"""The build as a Ray Job: `ray job submit` to a head started with `ray start --head` (token authentication on,
ports on 127.0.0.1), `ray job stop`, and two jobs on one split.

Ray binds the head's dashboard (the job API) where ``--dashboard-host`` says, here 127.0.0.1; its GCS, raylet and
agent ports it binds on every interface whatever ``--node-ip-address`` says (Ray 2.60 has no setting for them),
which is why the head runs with token authentication: every one of those calls needs the token.

The jobs run the fake teachers of pipeline_fakes (their module reaches the job's driver and workers through the
job's runtime_env), with the same settings as ``make_config``, so an in-process build is their reference.
Needs the [cluster] extra (ray[default]: the dashboard and the job client).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="ray job submit needs the project's [cluster] extra (ray[default])")

import pipeline_fakes  # noqa: E402
from pipeline.build import build_targets  # noqa: E402
from pipeline.processes import descendants  # noqa: E402
from pipeline_store_checks import check_split, tar_files  # noqa: E402
from shards.writer import ColumnWriter  # noqa: E402

TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.timeout(300)


@dataclass
class Head:
    address: str  # the job API (dashboard), http://127.0.0.1:PORT
    env: dict[str, str]  # what a client needs: the token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_cluster(temp: Path) -> None:
    """End every process of the cluster whose files live under ``temp`` (and what they started): `ray stop` would
    end every Ray process of the machine."""
    mine = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(temp).encode() in cmdline:
                mine.append(int(entry))
    procs = set(mine) | {p for pid in mine for p, _ in descendants(pid)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in procs:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(1.0)


@pytest.fixture(scope="module")
def head() -> Head:
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths are limited to 107 bytes
    token = temp / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={_free_port()}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        h = Head(f"http://127.0.0.1:{dashboard}", env)
        deadline = time.monotonic() + 90
        while _ray(h, "job", "list").returncode != 0:  # the job API comes up after `ray start` returns
            assert time.monotonic() < deadline, "the job API did not come up"
            time.sleep(1.0)
        yield h
    finally:
        _end_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _ray(head: Head, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args, "--address", head.address], env=env or head.env,
                          capture_output=True, text=True, timeout=240)


def _build_args(demo_root: Path, out: Path, *extra: str) -> list[str]:
    cfg = pipeline_fakes.make_config(demo_root, out, shard_size=2)
    return ["build-targets", "--executor", "ray", "--coco-root", str(demo_root), "--out", str(out),
            "--shard-size", "2", "--size", str(cfg.size), "--device", "cpu", "--glove", cfg.glove,
            *pipeline_fakes.FLAGS, *extra]


def _submit(head: Head, sid: str, args: list[str], wait: bool) -> subprocess.CompletedProcess:
    """`ray job submit` of the `pipeline` command with the fakes registered (what `pipeline ...` is for a user)."""
    code = "import sys, pipeline_fakes; pipeline_fakes.register(); from pipeline.cli import main; sys.exit(main())"
    entrypoint = [sys.executable, "-c", code, *args]  # `ray job submit` quotes each word itself
    runtime_env = {"env_vars": {"PYTHONPATH": str(TESTS)}}
    return subprocess.run([str(BIN / "ray"), "job", "submit", "--address", head.address, "--submission-id", sid,
                           "--runtime-env-json", json.dumps(runtime_env), *([] if wait else ["--no-wait"]),
                           "--", *entrypoint], env=head.env, capture_output=True, text=True, timeout=240)


def _client(head: Head, expression: str, sid: str) -> object:
    """``expression`` of Ray's job client ``c`` for job ``sid``, in a process of its own (the token is read from
    the environment), as JSON."""
    code = ("import json, sys; from ray.job_submission import JobSubmissionClient; "
            f"c, sid = JobSubmissionClient(sys.argv[1]), sys.argv[2]; print(json.dumps({expression}))")
    got = subprocess.run([sys.executable, "-c", code, head.address, sid], env=head.env, capture_output=True,
                         text=True, timeout=60)
    assert got.returncode == 0, got.stderr[-2000:]
    return json.loads(got.stdout.strip().splitlines()[-1])


def _status(head: Head, sid: str) -> dict[str, str]:
    """The job's status (SUCCEEDED, FAILED, STOPPED, RUNNING, ...) and message."""
    status, message = _client(head, "[(i := c.get_job_info(sid)).status.value, i.message or '']", sid)
    return {"status": status, "message": message}


def _logs(head: Head, sid: str) -> str:
    """What the job's driver printed (``ray job logs`` adds coloured lines of its own around it)."""
    return _client(head, "c.get_job_logs(sid)", sid)


def _finished_depth(split: Path) -> int:
    records = list(split.glob("depth/*/column.json"))
    if not records:
        return 0
    writer = ColumnWriter(split, "depth", records[0].parent.name)
    return sum(writer.is_done(sh) for sh in writer.records())


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_build_submitted_as_a_ray_job_succeeds_with_plain_log_lines(head: Head, demo_root: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "store"
    done = _submit(head, "build-ok", _build_args(demo_root, out), wait=True)  # follows the job's log to its end
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert _status(head, "build-ok")["status"] == "SUCCEEDED"
    log = _logs(head, "build-ok")
    assert "depth: " in log and " units, " in log  # periodic progress lines: the log is not a terminal
    assert "\r" not in log and "\x1b[" not in log  # no progress bars or colour codes garbling it
    assert "samples" in log  # the summary table
    check_split(out, demo_root, "train2017")  # complete, every image accounted for, verifies
    verified = subprocess.run([str(BIN / "shards"), "--shards", str(out), "--split", "train2017", "verify"],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_job_api_refuses_a_client_without_the_token(head: Head) -> None:
    env = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH")}
    listed = _ray(head, "job", "list", env=env)
    assert listed.returncode != 0


def test_a_stopped_job_resumes_in_a_new_job_to_the_same_bytes(head: Head, demo_root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out, split = tmp_path / "stopped", tmp_path / "stopped" / "train2017"
    slow = _build_args(demo_root, out, "--depth-param", "delay=0.3")  # the delay is not in the fingerprint
    assert _submit(head, "build-stop", slow, wait=False).returncode == 0
    _wait_for(lambda: _finished_depth(split) >= 2, 120, "the job never finished two depth shards")
    stopped = _ray(head, "job", "stop", "build-stop")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    _wait_for(lambda: _status(head, "build-stop")["status"] == "STOPPED", 60, "the job did not stop")
    kept = _finished_depth(split)
    manifest = split / "manifest.json"
    assert not manifest.exists() or "depth" not in json.loads(manifest.read_text())["columns"]  # stopped halfway
    resumed = _submit(head, "build-resume", _build_args(demo_root, out), wait=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    report = json.loads((split / "build-report.json").read_text())
    assert report["ok"] and report["stages"]["depth"]["skipped"] >= kept  # the stopped job's shards were kept
    pipeline_fakes.register_for_test(monkeypatch)
    reference = build_targets(pipeline_fakes.make_config(demo_root, tmp_path / "reference", shard_size=2))
    assert reference["ok"]
    check_split(out, demo_root, "train2017")
    assert tar_files(split) == tar_files(tmp_path / "reference" / "train2017")


def test_a_second_job_on_the_same_split_is_refused(head: Head, demo_root: Path, tmp_path: Path) -> None:
    out, split = tmp_path / "busy", tmp_path / "busy" / "train2017"
    slow = _build_args(demo_root, out, "--depth-param", "delay=2")  # still running when the second is refused
    assert _submit(head, "build-first", slow, wait=False).returncode == 0
    try:
        _wait_for(lambda: (split / "build.lock").is_file() and (split / "build.lock").stat().st_size > 0, 120,
                  "the first job never took the split's lock")
        second = _submit(head, "build-second", _build_args(demo_root, out), wait=True)
        assert second.returncode != 0
        status = _status(head, "build-second")
        assert status["status"] == "FAILED" and "exit code 2" in status["message"], status
        log = _logs(head, "build-second")
        assert "is being built by pid" in log and "Ray job build-first" in log, log[-2000:]
        assert _status(head, "build-first")["status"] == "RUNNING"  # the first goes on
    finally:
        _ray(head, "job", "stop", "build-first")
