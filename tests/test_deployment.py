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


def test_qdrant_cluster_profile_bootstraps_three_nodes_off_by_default():
    services = compose()["services"]
    nodes = {n: s for n, s in services.items() if "qdrant-cluster" in s.get("profiles", [])}
    assert set(nodes) == {"qdrant-node1", "qdrant-node2", "qdrant-node3"}
    assert all("profiles" not in services[n] for n in ("qdrant", "milvus", "asif"))
    for name, svc in nodes.items():
        assert svc["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert f"http://{name}:6335" in svc["command"]
        assert svc["environment"]["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY")
        assert any(v.startswith(f"qdrant_node{name[-1]}:") for v in svc["volumes"])
    for follower in ("qdrant-node2", "qdrant-node3"):
        cmd = nodes[follower]["command"]
        assert cmd[cmd.index("--bootstrap") + 1] == "http://qdrant-node1:6335"


def test_milvus_cluster_profile_runs_every_role_on_one_message_queue_off_by_default():
    services = compose()["services"]
    nodes = {n: s for n, s in services.items() if "milvus-cluster" in s.get("profiles", [])}
    roles = {n: s for n, s in nodes.items() if s["image"].startswith("milvusdb/milvus:")}
    assert {s["command"][-1] for s in roles.values()} == {"mixcoord", "proxy", "querynode",
                                                          "datanode", "indexnode"}
    assert services["milvus"]["image"] in {s["image"] for s in roles.values()}, "one version"
    for name, svc in roles.items():
        env = svc["environment"]
        assert env["PULSAR_ADDRESS"] == "pulsar://milvus-pulsar:6650", name
        assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
        assert env["MINIO_SECRETACCESSKEY"].startswith("${MINIO_ROOT_PASSWORD")
        assert "milvus-mixcoord" in svc.get("depends_on", {}) or name == "milvus-mixcoord"
    assert set(nodes["milvus-mixcoord"]["depends_on"]) == {"etcd", "minio", "milvus-pulsar"}
    # only the proxy is reachable, on loopback, beside the standalone's 19530
    published = {n: s["ports"] for n, s in nodes.items() if s.get("ports")}
    assert published == {"milvus-proxy": ["127.0.0.1:19531:19530"]}
    assert "pulsar_data" in compose()["volumes"]


def test_cluster_options_are_checked_and_accepted_by_both_clients(tmp_path):
    import pytest
    from pydantic import ValidationError

    from asif_index.anchors import AnchorManifest
    from asif_index.config import AsifSettings
    from asif_index.errors import ConfigError
    from connectors import open_store
    from connectors.cluster import ClusterOptions

    opts = ClusterOptions(shard_number=3, replication_factor=2, write_consistency_factor=2)
    with pytest.raises(ValidationError, match="cannot wait for replicas"):
        ClusterOptions(replication_factor=1, write_consistency_factor=2)
    with pytest.raises(ValidationError):
        ClusterOptions(shard_number=0)
    # what the Qdrant client sends to a server: its own request model takes the options
    from qdrant_client import models

    req = models.CreateCollection(vectors=models.VectorParams(size=4, distance="Cosine"),
                                  **opts.qdrant())
    assert (req.shard_number, req.replication_factor, req.write_consistency_factor) == (3, 2, 2)
    # an embedded engine has one node: refused with the fix named, before anything is written
    s = AsifSettings(backend="qdrant", path=tmp_path / "q", shard_number=2)
    with pytest.raises(ConfigError, match="need a Qdrant server"):
        open_store(s, "x", must_exist=False)
    from connectors.qdrant import QdrantStore

    local = QdrantStore("x", path=str(tmp_path / "local"), cluster=opts)
    with pytest.raises(ConfigError, match="need a Qdrant server"):
        local.create(AnchorManifest("i", "t", 4, 4))
    assert not local.exists()
    # Milvus takes the shard number at creation (Milvus Lite accepts and ignores it)
    pytest.importorskip("milvus_lite")
    from connectors.milvus import MilvusStore

    m = MilvusStore("x", uri=str(tmp_path / "m.db"), cluster=opts)
    m.create(AnchorManifest("i", "t", 4, 4))
    assert m.exists() and opts.milvus() == {"num_shards": 3}
    m.close()
