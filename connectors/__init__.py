"""Vector-database connectors for asif-index: one protocol, Qdrant and Milvus behind it."""

from __future__ import annotations

import atexit
from typing import TYPE_CHECKING
from pathlib import Path

from asif_index.errors import ConfigError
from connectors.base import AnchorRecord, Hit, ItemRecord, VectorStore

if TYPE_CHECKING:
    from connectors.index import Index


def __getattr__(name: str):
    # Index (and with it the encoders and torch) is imported on first use, so that commands
    # that only read a manifest ('stats', 'anchors list') start in well under two seconds.
    if name == "Index":
        from connectors.index import Index

        return Index
    raise AttributeError(f"module 'connectors' has no attribute '{name}'")


_LOCAL_QDRANT: dict[str, object] = {}
_EDGE: dict[tuple[str, str], VectorStore] = {}  # a shard's WAL admits one opener per process


@atexit.register
def close_embedded() -> None:
    """Close every embedded database this process opened, so another process may open them.
    Also run at exit: here, not in QdrantClient.__del__ during interpreter shutdown (which
    fails noisily once the import system is gone)."""
    for client in _LOCAL_QDRANT.values():
        client.close()
    _LOCAL_QDRANT.clear()
    for store in _EDGE.values():
        store.close()
    _EDGE.clear()
REGISTRY = "asif_registry"  # index of alias documents (alias -> physical index name)


def open_store(settings, name: str | None = None, resolve: bool = True,
               must_exist: bool = False) -> VectorStore:
    """The store named by settings (backend, url or path, api_key, collection, timeouts); an
    alias (see ``asif-index anchors rebuild``) resolves to the physical index it points at.

    must_exist: an embedded database's folder or file must already exist (every command but
    ``init``), so that a mistyped ``--path`` is an error instead of a new empty database."""
    name = name or settings.collection
    if settings.url and settings.path:
        raise ConfigError(f"give either --url ({settings.url}) or --path ({settings.path}), "
                          "not both: --url connects to a server, --path opens an embedded database")
    timeouts = {"timeout": settings.request_timeout, "retry_budget": settings.retry_budget}
    from connectors.cluster import ClusterOptions

    try:
        cluster = ClusterOptions(
            shard_number=getattr(settings, "shard_number", 1),
            replication_factor=getattr(settings, "replication_factor", 1),
            write_consistency_factor=getattr(settings, "write_consistency_factor", 1))
    except ValueError as exc:
        raise ConfigError(f"cluster settings: {exc}") from None
    if not settings.url and must_exist:
        default = "asif-qdrant" if settings.backend == "qdrant" else "asif.db"
        where = Path(settings.path or default)
        if not where.exists():
            raise ConfigError(
                f"no {settings.backend} database at '{where}' (--path); check the path, or "
                "create an index there first with 'asif-index init'")
    if settings.backend == "qdrant":
        from connectors.qdrant import QdrantStore

        if settings.url:
            reg = QdrantStore(REGISTRY, url=settings.url, api_key=settings.api_key, **timeouts)
            return QdrantStore(_resolve(reg, name, resolve), client=reg.client, where=reg.where,
                               cluster=cluster, **timeouts)
        if not cluster.default:
            raise ConfigError("shards and replicas need a Qdrant server or cluster (--url); "
                              "the embedded Qdrant has one node")
        # Embedded: Qdrant's own engine (Qdrant Edge), one store per (folder, index) per process.
        path = str(Path(settings.path or "asif-qdrant").resolve())
        reg = edge_store(path, REGISTRY, settings)
        return edge_store(path, _resolve(reg, name, resolve), settings)
    if settings.backend == "milvus":
        from connectors.milvus import MilvusStore

        uri = settings.url or str(settings.path or "asif.db")
        kw = dict(uri=uri, token=settings.api_key, connect_timeout=settings.connect_timeout,
                  **timeouts)
        reg = MilvusStore(REGISTRY, **kw)
        store = MilvusStore(_resolve(reg, name, resolve), cluster=cluster, **kw)
        store.registry = reg
        return store
    raise ConfigError(f"backend '{settings.backend}' cannot be opened from the command line; "
                      "use qdrant or milvus")


def open_index(settings, name: str | None = None) -> "Index":
    """The live index named by settings, opened with the encoders it was made with (its
    manifest's specs, :meth:`AsifSettings.for_index`) unless the settings name others, its
    anchors cached under ``settings.cache_dir``: what the CLI, the service and a script use."""
    from connectors.index import Index
    from connectors.readonly import live_manifest

    store = open_store(settings, name, must_exist=True)
    s = settings.for_index(live_manifest(store))  # a missing index fails before any model loads
    idx = Index.open(store, *s.encoders(), cache_dir=str(s.cache_dir))
    idx.query_keep = s.query_keep
    return idx


def edge_store(path: str, name: str, settings=None) -> VectorStore:
    from connectors.qdrant_edge import QdrantEdgeStore

    key = (str(Path(path).resolve()), name)
    if key not in _EDGE:
        dtype = getattr(settings, "sparse_datatype", None) or "float32"
        _EDGE[key] = QdrantEdgeStore(name, path=key[0], sparse_datatype=dtype)
    return _EDGE[key]


def forget_store(store: VectorStore) -> None:
    """Close an embedded store and drop it from the per-process table (after a migration,
    or before another process takes the folder over)."""
    for key, s in list(_EDGE.items()):
        if s is store:
            s.close()
            del _EDGE[key]


def _resolve(registry: VectorStore, name: str, resolve: bool) -> str:
    from connectors.rebuild import resolve_alias

    return resolve_alias(registry, name) if resolve else name


def list_indexes(settings) -> list[dict]:
    """Every asif index in the database settings name: name, anchor version, counts, and the
    aliases pointing at it."""
    reg = open_store(settings, REGISTRY, resolve=False)
    names = sorted({c[:-len("_meta")] for c in reg.collection_names()
                    if c.endswith("_meta") and c != f"{REGISTRY}_meta"})
    aliases: dict[str, list[str]] = {}
    if reg.exists():
        for key, doc in reg.list_docs("alias").items():
            aliases.setdefault(doc.get("physical", ""), []).append(key.split(":", 1)[1])
    out = []
    for n in names:
        store = open_store(settings, n, resolve=False)
        man = store.read_manifest()
        out.append({"name": n, "anchor_version": man.version if man else None,
                    "k": man.k if man else None,
                    "items": store.count_items(version=man.version) if man else 0,
                    "aliases": sorted(aliases.get(n, []))})
    return out


def drop_index(settings, name: str, force: bool = False) -> None:
    """Drop a physical index; refused while an alias points at it unless ``force``."""
    from asif_index.errors import CollectionError

    listed = {d["name"]: d for d in list_indexes(settings)}
    if name not in listed:
        raise CollectionError(f"no index '{name}' here ('asif-index indexes list' shows them)")
    if listed[name]["aliases"] and not force:
        raise ConfigError(f"index '{name}' is what alias {listed[name]['aliases']} points at; "
                          "readers use it. Rebuild elsewhere first, or pass --force")
    store = open_store(settings, name, resolve=False)
    store.drop()
    forget_store(store)


def registry_of(settings) -> VectorStore:
    from asif_index.anchors import AnchorManifest

    store = open_store(settings, REGISTRY, resolve=False)
    if not store.exists():
        store.create(AnchorManifest("-", "-", 2, 2))  # Milvus vectors need dim >= 2
    return store


__all__ = ["AnchorRecord", "Hit", "Index", "ItemRecord", "VectorStore", "close_embedded",
           "drop_index", "list_indexes", "open_index", "open_store"]
