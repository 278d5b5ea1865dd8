"""docker-compose.yml: a Ray head, GPU workers with an NVIDIA reservation, shared volumes, loopback-only ports."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_describes_the_cluster() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"ray-head", "ray-worker", "pipeline"} <= set(services)
    assert "--head" in services["ray-head"]["command"]
    assert "ray-head:6379" in services["ray-worker"]["command"]
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    mounts = {name: {v.split("}:")[1].split(":")[0] for v in svc["volumes"]} for name, svc in services.items()}
    for name, targets in mounts.items():
        assert {"/data/coco", "/data/shards", "/models"} <= targets, name  # the same paths in every container
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("${BIND:-127.0.0.1}:"), port
    for name, svc in services.items():  # every download and cache lands on the shared /models volume
        env = svc["environment"]
        assert all(env[k].startswith("/models/") for k in ("HF_HOME", "TORCH_HOME", "GENSIM_DATA_DIR",
                                                          "FVCORE_CACHE", "YMAP_DISTILL_CACHE")), name
    assert devices[0]["count"] == "${GPUS_PER_WORKER:-all}"  # one worker takes the host's GPUs
    job = services["pipeline"]
    assert job["environment"]["RAY_ADDRESS"] == "auto"
    assert job["command"][0] == "build-targets" and "exec pipeline" in job["entrypoint"][2]
    assert (ROOT / job.get("build", doc["x-node"]["build"])["dockerfile"]).is_file()


def _interpolated(text: str) -> str:
    """The file as Compose reads it with no variable set: ``${VAR:-default}`` -> default, ``$$`` -> ``$``."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)
    return text.replace("$$", "$")


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    # tests/data/compose_spec.json: the Compose Specification's JSON schema (Apache-2.0), as docker-compose
    # 1.29.2 ships it; no Docker engine is needed to check a file against it.
    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    doc = yaml.safe_load(_interpolated((ROOT / "docker-compose.yml").read_text()))
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(doc)] == []
    broken = copy.deepcopy(doc)  # the check can fail: a misspelled key is caught
    resources = broken["services"]["ray-worker"]["deploy"]["resources"]
    resources["reservation"] = resources.pop("reservations")
    assert any("reservation" in e.message for e in validator.iter_errors(broken))
