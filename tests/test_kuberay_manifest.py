"""deploy/kuberay/rayjob.yaml: the fields the KubeRay RayJob CRD (ray.io/v1) requires, the operator's own
validation rules, and agreement with docker-compose.yml (entrypoint, mounts, environment). No cluster here: this
is what can be checked without one."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def job() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _pods(job: dict) -> list[tuple[str, dict]]:
    spec = job["spec"]["rayClusterSpec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods + [("submitter", job["spec"]["submitterPodTemplate"]["spec"])]


def test_required_fields_of_the_rayjob_crd(job: dict) -> None:
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47  # DNS-1035, KubeRay's cap
    spec = job["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]  # required; rayStartParams required before KubeRay 1.4
    assert isinstance(head["rayStartParams"], dict) and all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert cluster["workerGroupSpecs"], "a worker group runs the teachers"
    for group in cluster["workerGroupSpecs"]:
        assert {"groupName", "template", "rayStartParams"} <= set(group)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]  # the operator's validation
    for where, pod in _pods(job):
        assert pod["containers"], where
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert c["name"] and c["image"], where  # core/v1 Container: name required; an image to run
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes and m["mountPath"].startswith("/"), (where, m)
            for e in c.get("env", []):
                assert set(e) == {"name", "value"}, (where, e)
        assert pod["securityContext"]["runAsNonRoot"] is True, where


def test_the_entrypoint_is_a_build_the_cli_accepts(job: dict) -> None:
    from pipeline.cli import build_parser

    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["pipeline", "build-targets"]
    args = build_parser().parse_args(argv[1:])
    assert (args.coco_root, args.out) == ("/data/coco", "/data/shards")


def test_volumes_environment_and_command_agree_with_compose(job: dict, compose: dict) -> None:
    node = compose["services"]["ray-worker"]
    mounts = {}
    for v in node["volumes"]:  # "${COCO_ROOT:-./data/coco}:/data/coco:ro"
        target, mode = re.fullmatch(r"\$\{[^}]*\}:([^:]+)(?::(\w+))?", v).groups()
        mounts[target] = mode == "ro"
    token = "/run/secrets/ray_auth_token"  # compose's secret path
    env = {k: str(v) for k, v in node["environment"].items()}
    for where, pod in _pods(job)[:-1]:  # the head and the workers: the nodes
        c = pod["containers"][0]
        got = {m["mountPath"]: bool(m.get("readOnly")) for m in c["volumeMounts"]}
        assert {k: v for k, v in got.items() if k in mounts} == mounts, where
        assert token in got and got[token], where  # the token, read-only, where compose puts it
        assert {e["name"]: e["value"] for e in c["env"]} == env, where
    compose_cmd = compose["services"]["pipeline"]["command"]
    argv = shlex.split(job["spec"]["entrypoint"])
    for flag in ("--coco-root", "--out", "--split"):
        assert argv[argv.index(flag) + 1] == compose_cmd[compose_cmd.index(flag) + 1], flag
