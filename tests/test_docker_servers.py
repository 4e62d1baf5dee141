"""The official containers, started through the docker SDK (skips without an engine)."""

import numpy as np
import pytest

from asif_index.errors import BackendUnavailableError


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("docker")
    from connectors.servers import docker_client

    try:
        return docker_client()
    except BackendUnavailableError as exc:
        pytest.skip(f"no Docker engine here, so the official Qdrant/Milvus containers cannot start: {exc}")


@pytest.mark.docker
def test_qdrant_container_roundtrip(engine, tmp_path):
    from asif_index.anchors import AnchorManifest
    from connectors.base import ItemRecord
    from connectors.qdrant import QdrantStore
    from connectors.servers import start_qdrant_container

    c, url = start_qdrant_container(name=f"asif-test-{np.random.randint(1e9)}")
    try:
        s = QdrantStore("dock", url=url)
        s.create(AnchorManifest("i", "t", 4, 3))
        s.upsert_items([ItemRecord("00000000-0000-0000-0000-000000000002", "item-1", "image",
                                   np.array([1, 2]), np.array([0.6, 0.8], np.float32),
                                   np.ones(4, np.float32), 0.1, 1, payload={"a": 1})])
        assert s.search(np.array([2]), np.array([1.0]), 5)[0].score == pytest.approx(0.8)
    finally:
        c.stop()
