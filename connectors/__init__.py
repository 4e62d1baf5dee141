"""Vector-database connectors for asif-index: one protocol, Qdrant and Milvus behind it."""

from __future__ import annotations

from asif_index.errors import ConfigError
from connectors.base import AnchorRecord, Hit, ItemRecord, VectorStore
from connectors.index import Index


def open_store(settings) -> VectorStore:
    """The store named by settings (backend, url or path, api_key, collection)."""
    if settings.backend == "qdrant":
        from connectors.qdrant import QdrantStore

        if settings.url:
            return QdrantStore(settings.collection, url=settings.url, api_key=settings.api_key)
        return QdrantStore(settings.collection, path=str(settings.path or "asif-qdrant"))
    if settings.backend == "milvus":
        from connectors.milvus import MilvusStore

        uri = settings.url or str(settings.path or "asif.db")
        return MilvusStore(settings.collection, uri=uri, token=settings.api_key)
    raise ConfigError(f"backend '{settings.backend}' cannot be opened from the command line; "
                      "use qdrant or milvus")


__all__ = ["AnchorRecord", "Hit", "Index", "ItemRecord", "VectorStore", "open_store"]
