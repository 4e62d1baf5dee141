"""The compose file and Dockerfile users deploy with (no Docker engine here: checked as text)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_is_health_checked_and_bound_to_loopback():
    services = compose()["services"]
    assert {"qdrant", "milvus", "asif"} <= set(services)
    for name, svc in services.items():
        assert "healthcheck" in svc, name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_no_default_credentials_and_every_secret_from_the_env_file():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "minioadmin" not in text
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"QDRANT_API_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "ASIF_SERVE_READ_KEYS",
            "ASIF_SERVE_ADMIN_KEYS"} <= required
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required <= set(example), "every required secret is listed in .env.example"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    qdrant = compose()["services"]["qdrant"]["environment"]
    assert qdrant["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY")


def test_service_image_serves_the_cli_and_runs_unprivileged():
    docker = (ROOT / "Dockerfile").read_text()
    assert "USER asif" in docker and '"asif-index", "serve"' in docker
    assert "torch==2.14.1" in docker and ".[qdrant,milvus,serve]" in docker
    asif = compose()["services"]["asif"]
    assert asif["build"] == "." and "/data/images:ro" in " ".join(asif["volumes"])
    env = asif["environment"]
    assert env["ASIF_API_KEY"].startswith("${QDRANT_API_KEY")
