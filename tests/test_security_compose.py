"""docker-compose.yml and its image against untrusted callers: non-root containers, Ray token authentication on
every node with the token read from a file the user made, loopback-only ports, read-only inputs.

The last test starts a real Ray head in token mode and checks that its job API refuses requests without the token
(it needs Ray's dashboard packages, ``ray[default]``, and is skipped without them)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "pipeline.Dockerfile"
TOKEN_FILE_ENV = {"RAY_AUTH_TOKEN_FILE": "/home/someone/.ray-token"}


class MissingVariable(Exception):
    pass


_VAR = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def _interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation of every string of a parsed file: ``$$``, ``$VAR``, ``${VAR}``,
    ``${VAR:-default}``/``${VAR-default}`` and ``${VAR:?error}``/``${VAR?error}`` (an error stops Compose)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        val = env.get(name)
        unset = val is None or (val == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset else val
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return val
        return val or ""

    return _VAR.sub(one, value)


def _raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _resolved(env: dict[str, str]) -> dict:
    return _interpolate(_raw(), env)


def _secret_names(svc: dict) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])]


def test_every_service_runs_as_a_non_root_user_with_the_host_ids() -> None:
    raw = _raw()
    assert set(raw["services"]) >= {"ray-head", "ray-worker", "pipeline"}
    default = _resolved(TOKEN_FILE_ENV)
    chosen = _resolved({**TOKEN_FILE_ENV, "UID": "4321", "GID": "99"})
    for name, svc in default["services"].items():
        assert "user" in svc, name
        uid, gid = (int(x) for x in svc["user"].split(":"))
        assert uid != 0 and gid != 0, (name, svc["user"])  # not root by default
        # the host user's ids (from UID/GID) so the store's files belong to them, and the image is built for them
        assert chosen["services"][name]["user"] == "4321:99", name
        assert chosen["services"][name]["build"]["args"] == {"APP_UID": "4321", "APP_GID": "99"}, name
        assert svc["build"]["args"] == {"APP_UID": str(uid), "APP_GID": str(gid)}, name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name  # no sudo/setuid back to root
        assert svc.get("privileged") is not True and "network_mode" not in svc, name


def test_published_ports_bind_to_loopback_by_default() -> None:
    raw, default = _raw(), _resolved(TOKEN_FILE_ENV)
    exposed = _resolved({**TOKEN_FILE_ENV, "BIND": "0.0.0.0"})
    published = []
    for name, svc in raw["services"].items():
        for i, port in enumerate(svc.get("ports", [])):
            assert isinstance(port, str) and port.startswith("${BIND:-127.0.0.1}:"), (name, port)
            host, _, container_port = default["services"][name]["ports"][i].split(":")
            assert host == "127.0.0.1", (name, port)
            assert exposed["services"][name]["ports"][i].startswith("0.0.0.0:")  # BIND opens it on purpose
            published.append(container_port)
    assert published == ["8265"]  # the dashboard / job API only: the GCS (6379) stays on the bridge network


def test_ray_token_authentication_is_on_for_every_node_from_one_secret_file() -> None:
    raw = _raw()
    paths = set()
    for name, svc in raw["services"].items():
        env = svc["environment"]
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert "RAY_AUTH_TOKEN" not in env, name  # no token literal in the file (nor passed through the env)
        secret_names = _secret_names(svc)
        assert secret_names == ["ray_auth_token"], name
        assert env.get("RAY_AUTH_TOKEN_PATH") == "/run/secrets/ray_auth_token", name  # where Compose mounts it
        paths.add(env["RAY_AUTH_TOKEN_PATH"])
    assert len(paths) == 1  # the same token on the head, the workers and the job container
    secret = raw["secrets"]["ray_auth_token"]
    assert set(secret) == {"file"}  # a file on the host, not an environment variable or a literal
    assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN_FILE:\?[^}]+\}", secret["file"]), secret["file"]
    assert not re.search(r"[0-9a-f]{32}", COMPOSE.read_text())  # no token pasted anywhere in the file


def test_compose_refuses_to_start_without_a_token_file() -> None:
    for env in ({}, {"RAY_AUTH_TOKEN_FILE": ""}):
        with pytest.raises(MissingVariable, match="RAY_AUTH_TOKEN_FILE"):
            _resolved(env)
    doc = _resolved(TOKEN_FILE_ENV)
    assert doc["secrets"]["ray_auth_token"]["file"] == TOKEN_FILE_ENV["RAY_AUTH_TOKEN_FILE"]
    # the keys this adds (user, security_opt, secrets, build args) are where the Compose Specification has them
    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(doc)] == []
    doc["services"]["ray-head"]["secret"] = doc["services"]["ray-head"].pop("secrets")
    assert any("secret" in e.message for e in validator.iter_errors(doc))  # a misspelling is caught


def test_only_the_store_and_the_model_cache_are_mounted_writable() -> None:
    for name, svc in _resolved(TOKEN_FILE_ENV)["services"].items():
        writable, read_only = set(), set()
        for volume in svc["volumes"]:
            parts = volume.split(":")
            (read_only if len(parts) == 3 and "ro" in parts[2].split(",") else writable).add(parts[1])
        assert read_only == {"/data/coco"}, name
        assert writable == {"/data/shards", "/models"}, name  # shards are written; teachers download to /models


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_image_creates_and_runs_as_a_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    assert int(args["APP_UID"]) != 0 and int(args["APP_GID"]) != 0
    default_user = _resolved(TOKEN_FILE_ENV)["services"]["ray-head"]["user"]
    assert default_user == f"{args['APP_UID']}:{args['APP_GID']}"  # compose's defaults match the image's
    runs = [rest for word, rest in instructions if word == "RUN"]
    assert any(re.search(r'useradd\b.*--uid "?\$\{?APP_UID\b', r) for r in runs)
    users = [(i, rest) for i, (word, rest) in enumerate(instructions) if word == "USER"]
    last_index, last_user = users[-1]
    assert last_user == "${APP_UID}:${APP_GID}", last_user  # the image's final user, not root
    assert any(word == "RUN" for word, _ in instructions[last_index + 1:])  # the self-check runs as that user
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    home = re.search(r"\bHOME=(\S+)", env).group(1)
    assert any(re.search(rf'install -d\b[^&]*-o "?\$\{{?APP_UID\b[^&]*\s{re.escape(home)}\b', r) for r in runs)
    # the base image's password-less sudo is taken away, from /etc/sudoers and from /etc/sudoers.d
    assert any(re.search(r"sed -i '/NOPASSWD/d' /etc/sudoers(;|\s|$)", r) for r in runs)
    assert any(re.search(r"/etc/sudoers\.d\b.*sed -i '/NOPASSWD/d'", r) for r in runs)


def test_ray_reads_the_token_the_way_compose_hands_it_over(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    env_from_compose = _raw()["services"]["ray-worker"]["environment"]
    token = secrets.token_hex(32)
    token_file = tmp_path / "ray-token"
    token_file.write_text(token + "\n")  # as `openssl rand -hex 32 > FILE` writes it
    probe = ("from ray._private.authentication.authentication_utils import is_token_auth_enabled as on\n"
             "from ray._raylet import AuthenticationTokenLoader as L\n"
             "print(on(), L.instance().get_token_for_http_header().get('authorization'))")

    def run(extra: dict[str, str]) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env.update(extra, HOME=str(tmp_path))
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                              timeout=60, check=True).stdout.strip()

    given = {"RAY_AUTH_MODE": env_from_compose["RAY_AUTH_MODE"], "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert run(given) == f"True Bearer {token}"  # the mode's name and the path variable are Ray's own
    assert run({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == "False None"  # without the mode: no auth at all


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _request(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _pids_mentioning(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_ray_job_api_refuses_requests_without_the_token() -> None:
    pytest.importorskip("ray")
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        pytest.skip(f"Ray's dashboard (ray[default]) is not installed: {missing}")
    env_from_compose = _raw()["services"]["ray-head"]["environment"]
    # A short unique folder: Ray's unix sockets live under it (108-byte limit), and it names our processes.
    temp_dir = tempfile.mkdtemp(prefix="rayauth", dir="/tmp")
    token = secrets.token_hex(32)
    token_file = Path(temp_dir) / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    gcs, dashboard, agent, agent_grpc, client, runtime_env, metrics = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=temp_dir, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE=env_from_compose["RAY_AUTH_MODE"],
               RAY_AUTH_TOKEN_PATH=str(token_file))
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--include-dashboard=true",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--port={gcs}",
           f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--ray-client-server-port={client}",
           f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
           "--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000", f"--temp-dir={temp_dir}/t"]
    log = Path(temp_dir) / "head.log"
    base = f"http://127.0.0.1:{dashboard}"
    with open(log, "wb") as out:  # its own session: the whole process group is killed at the end
        head = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=temp_dir,
                                start_new_session=True)
    left = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert head.poll() is None, log.read_text()[-3000:]
            try:
                if _request(f"{base}/api/jobs/", token)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)

        assert json.loads(_request(f"{base}/api/authentication_mode")[1]) == {"authentication_mode": "token"}
        assert _request(f"{base}/api/jobs/")[0] == 401  # no token
        assert _request(f"{base}/api/jobs/", "not-the-token")[0] == 403  # a wrong token
        refused = Path(temp_dir) / "refused"
        assert _request(f"{base}/api/jobs/", None, {"entrypoint": f"touch {refused}"})[0] == 401
        assert _request(f"{base}/api/jobs/", "0" * 64, {"entrypoint": f"touch {refused}"})[0] == 403
        ran = Path(temp_dir) / "ran"
        status, body = _request(f"{base}/api/jobs/", token, {"entrypoint": f"touch {ran}"})
        assert status == 200 and json.loads(body)["submission_id"], body  # with the token: accepted
        while not ran.exists():  # and it runs: the refused ones would have run the same way
            assert time.monotonic() < deadline + 30, log.read_text()[-3000:]
            time.sleep(0.5)
        assert not refused.exists()
    finally:
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)
        for _ in range(50):  # anything Ray started outside the group still names our temp folder
            left = _pids_mentioning(temp_dir)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert left == []  # every process of the head has ended
