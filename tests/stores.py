"""Store factories shared by the connector tests."""

import os
import uuid

import pytest

BACKENDS = ["memory", "qdrant-edge", "qdrant-local", "milvus-lite", "qdrant-server", "milvus-server"]


def make_store(kind: str, tmp_path, name: str | None = None):
    name = name or f"t{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        from connectors.memory import MemoryStore

        return MemoryStore(name)
    if kind == "qdrant-edge":
        pytest.importorskip("qdrant_edge")
        from connectors.qdrant_edge import QdrantEdgeStore

        return QdrantEdgeStore(name, path=str(tmp_path / "edge"))
    if kind == "qdrant-local":
        from connectors.qdrant import QdrantStore

        return QdrantStore(name, path=str(tmp_path / "qdrant"))
    if kind == "milvus-lite":
        from connectors.milvus import MilvusStore

        return MilvusStore(name, uri=str(tmp_path / "milvus.db"))
    if kind == "qdrant-server":
        url = os.environ.get("ASIF_QDRANT_URL")
        if not url:
            pytest.skip("ASIF_QDRANT_URL is not set (start one with docker compose up qdrant)")
        from connectors.qdrant import QdrantStore

        return QdrantStore(name, url=url, api_key=os.environ.get("ASIF_QDRANT_API_KEY"))
    if kind == "milvus-server":
        uri = os.environ.get("ASIF_MILVUS_URI")
        if not uri:
            pytest.skip("ASIF_MILVUS_URI is not set (start one with docker compose up milvus)")
        from connectors.milvus import MilvusStore

        return MilvusStore(name, uri=uri, token=os.environ.get("ASIF_MILVUS_TOKEN"))
    raise ValueError(kind)
