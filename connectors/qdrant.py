"""Qdrant: local mode (``path=``, embedded) or a server (``url=``, API key)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Iterator

import numpy as np

from asif_index._optional import require
from asif_index.anchors import AnchorManifest
from asif_index.errors import BackendUnavailableError, CollectionError, ConfigError
from connectors import filters
from connectors.base import (
    RAW_DTYPE_KEY,
    candidate_entries,
    two_stage_keep,
    check_index_name,
    FOREVER,
    AnchorRecord,
    Filter,
    Hit,
    ItemRecord,
    VectorStore,
    with_retries,
    in_range,
)
from connectors.qdrant_layout import (
    SPARSE_FULL_SCAN,
    item_payload,
    item_record,
    payload_key,
    point_hit,
    stored_rel,
)



class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _doc_id(key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"asif-doc:{key}"))


def _field_indexes(manifest, m) -> list:
    """(field, schema) of the declared fields' payload indexes."""
    from connectors.filters import DATE_TWIN
    from connectors.schema import declared

    kinds = {"keyword": m.PayloadSchemaType.KEYWORD, "integer": m.PayloadSchemaType.INTEGER,
             "float": m.PayloadSchemaType.FLOAT, "bool": m.PayloadSchemaType.BOOL}
    out = []
    for k, t in declared(manifest).items():
        # a date's ranges compare its seconds twin; equality matches its text
        out += ([(k, kinds["keyword"]), (DATE_TWIN + k, kinds["float"])] if t == "datetime"
                else [(k, kinds[t])])
    return out


class QdrantStore(VectorStore):
    """``NAME_items`` points hold ``rel`` (sparse, dot product) and ``emb_<modality>``
    (dense); payload carries the item id, validity range, modality, k-th similarity."""

    backend = "qdrant"

    def __init__(self, name: str = "asif", *, path: str | None = None, url: str | None = None,
                 api_key: str | None = None, timeout: float = 30.0, client=None,
                 retry_budget: float = 60.0, where: str | None = None,
                 cluster=None) -> None:
        """``client``: share one QdrantClient between indexes (local mode allows a single
        client per folder; ``where`` then names it in messages). timeout: seconds one request
        may take; retry_budget: seconds of retries of one operation before it fails.
        cluster: :class:`connectors.cluster.ClusterOptions` for the collections a create()
        makes (shards, replicas, write consistency); a server only."""
        qc = require("qdrant_client", "the Qdrant connector")
        self._m = require("qdrant_client.models", "the Qdrant connector")
        self.name = check_index_name(name, self.backend)
        from connectors.cluster import ClusterOptions

        self.cluster = cluster or ClusterOptions()
        if client is not None:
            self.client = client
        elif url:
            self.client = qc.QdrantClient(url=url, api_key=api_key, timeout=max(1, int(timeout)))
        else:
            try:
                self.client = qc.QdrantClient(path=path or ":memory:")
            except RuntimeError as exc:
                raise BackendUnavailableError(
                    f"Qdrant local folder '{path}' is open in another process ({exc}); local mode "
                    "is single-process: stop the other one, or run a Qdrant server for "
                    "concurrent access"
                ) from exc
        self.where = url or path or where or ":memory:"
        # Local mode is a Python engine with no locking: one lock per client serialises the
        # calls of threads that share it (servers handle concurrency themselves).
        self._lock = getattr(self.client, "_asif_lock", None)
        if self._lock is None:
            self._lock = threading.RLock() if not url and "://" not in self.where \
                else _NoLock()
            self.client._asif_lock = self._lock
        transient: tuple = (ConnectionError, TimeoutError)
        backend: tuple = ()
        try:
            from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

            transient = transient + (ResponseHandlingException,)
            backend = (UnexpectedResponse, ValueError)
        except ImportError:  # pragma: no cover
            pass
        def call(what, fn, *a, **kw):
            with self._lock:
                return with_retries(fn, lambda e: isinstance(e, transient),
                                    f"Qdrant {what} on {self.where}", backend,
                                    budget=retry_budget)(*a, **kw)

        self._call = call
        self._call("connect", self.client.get_collections)

    def _has(self, coll: str) -> bool:
        return bool(self._call("collection_exists", self.client.collection_exists, coll))

    # collections -----------------------------------------------------------------
    def collection_names(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def exists(self) -> bool:
        return self._has(self.meta)

    def create(self, manifest: AnchorManifest, recreate: bool = False) -> None:
        m = self._m
        if self.exists():
            if not recreate:
                raise CollectionError(
                    f"index '{self.name}' already exists in Qdrant at {self.where}; open it, or "
                    "pass recreate=True (--recreate) to replace it"
                )
            self.drop()
        spread = {}
        if not self.cluster.default:
            if "://" not in self.where:
                raise ConfigError(
                    f"shards and replicas ({self.cluster}) need a Qdrant server or cluster "
                    "(--url); an embedded Qdrant has one node")
            spread = self.cluster.qdrant()
        self._call("create", self.client.create_collection, self.meta,
                   vectors_config=m.VectorParams(size=1, distance=m.Distance.DOT))
        self._call("create", self.client.create_collection, self.anchors, vectors_config={
            "image": m.VectorParams(size=manifest.image_dim, distance=m.Distance.COSINE),
            "text": m.VectorParams(size=manifest.text_dim, distance=m.Distance.COSINE),
        }, **spread)
        raw = (m.Datatype.FLOAT16 if manifest.extra.get(RAW_DTYPE_KEY) == "float16"
               else None)
        # filtered searches through the inverted index at every segment size (every search
        # carries the version filter; see qdrant_layout.SPARSE_FULL_SCAN)
        sparse = m.SparseVectorParams(index=m.SparseIndexParams(
            full_scan_threshold=SPARSE_FULL_SCAN))
        self._call("create", self.client.create_collection, self.items, vectors_config={
            "emb_image": m.VectorParams(size=manifest.image_dim, distance=m.Distance.COSINE,
                                        datatype=raw),
            "emb_text": m.VectorParams(size=manifest.text_dim, distance=m.Distance.COSINE,
                                       datatype=raw),
        }, sparse_vectors_config={"rel": sparse,
                                  **({"cand": sparse} if two_stage_keep(manifest) else {})},
            **spread)
        if "://" in self.where:  # payload indexes exist on servers (local mode ignores them)
            for field, kind in (("asif_modality", m.PayloadSchemaType.KEYWORD),
                                ("asif_item", m.PayloadSchemaType.KEYWORD),
                                ("asif_from", m.PayloadSchemaType.INTEGER),
                                ("asif_to", m.PayloadSchemaType.INTEGER),
                                ("asif_kth", m.PayloadSchemaType.FLOAT),
                                *_field_indexes(manifest, m)):
                self._call("index", self.client.create_payload_index, self.items,
                           field_name=field, field_schema=kind)
        self.write_manifest(manifest)
        self._candidate_keep = None

    def drop(self) -> None:
        for c in (self.items, self.anchors, self.meta):
            if self._has(c):
                self._call("drop", self.client.delete_collection, c)

    def get_doc(self, key: str) -> dict | None:
        pts = self._call("retrieve", self.client.retrieve, self.meta, [_doc_id(key)], with_payload=True)
        return json.loads(pts[0].payload["doc"]) if pts else None

    def put_doc(self, key: str, doc: dict | None) -> None:
        if doc is None:
            self._call("delete", self.client.delete, self.meta,
                       points_selector=self._m.PointIdsList(points=[_doc_id(key)]), wait=True)
            return
        pt = self._m.PointStruct(id=_doc_id(key), vector=[1.0],
                                 payload={"key": key, "kind": key.split(":", 1)[0],
                                          "doc": json.dumps(doc)})
        self._call("upsert", self.client.upsert, self.meta, [pt], wait=True)

    def list_docs(self, kind: str) -> dict[str, dict]:
        m = self._m
        flt = m.Filter(must=[m.FieldCondition(key="kind", match=m.MatchValue(value=kind))])
        out, offset = {}, None
        while True:
            pts, offset = self._call("scroll", self.client.scroll, self.meta, scroll_filter=flt,
                                     limit=256, offset=offset, with_payload=True)
            out.update({p.payload["key"]: json.loads(p.payload["doc"]) for p in pts
                        if p.payload["key"].startswith(kind + ":")})
            if offset is None:
                return out

    # anchors -----------------------------------------------------------------------
    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None:
        pts = [self._m.PointStruct(
            id=int(a.id), vector={"image": a.image.tolist(), "text": a.text.tolist()},
            payload={"caption": a.caption, "image_ref": a.image_ref, "source": a.source,
                     "anchor_id": int(a.id), "added_at": a.added_at, "key": a.key,
                     "added_version": int(a.added_version),
                     "removed_version": int(a.removed_version)})
            for a in anchors]
        for s in range(0, len(pts), 256):
            self._call("upsert anchors", self.client.upsert, self.anchors, pts[s:s + 256], wait=True)

    def delete_anchors(self, ids: list[int]) -> None:
        self._call("delete anchors", self.client.delete, self.anchors,
                   points_selector=self._m.PointIdsList(points=[int(i) for i in ids]), wait=True)

    def fetch_anchors(self, version: int | None = None) -> list[AnchorRecord]:
        out, offset = [], None
        while True:
            pts, offset = self._call("scroll anchors", self.client.scroll, self.anchors, limit=1024,
                                     offset=offset, with_payload=True, with_vectors=True)
            for p in pts:
                pl = p.payload
                a = AnchorRecord(int(p.id), np.asarray(p.vector["image"], np.float32),
                                 np.asarray(p.vector["text"], np.float32), pl["caption"],
                                 pl["image_ref"], pl["source"], pl["added_at"], pl.get("key", ""),
                                 pl.get("added_version", 0), pl.get("removed_version", FOREVER))
                if a.visible(version):
                    out.append(a)
            if offset is None:
                break
        out.sort(key=lambda a: a.id)
        return out

    # items ---------------------------------------------------------------------------
    def upsert_items(self, items: list[ItemRecord]) -> None:
        m = self._m
        keep = self.candidate_keep() if items else None
        pts = []
        for it in items:
            payload = item_payload(it)
            idx, val = stored_rel(it)
            vectors = {f"emb_{it.modality}": it.embedding.tolist(),
                       "rel": m.SparseVector(indices=idx, values=val)}
            if keep:
                ci, cv = candidate_entries(it.sparse_indices, it.sparse_values, keep)
                vectors["cand"] = m.SparseVector(indices=ci.tolist(),
                                                 values=np.asarray(cv, np.float32).tolist())
            pts.append(m.PointStruct(id=it.id, vector=vectors, payload=payload))
        if pts:
            self._call("upsert items", self.client.upsert, self.items, pts, wait=True)

    def _record(self, p) -> ItemRecord:
        return item_record(p)

    def fetch_items(self, ids: list[str]) -> list[ItemRecord]:
        pts = self._call("retrieve", self.client.retrieve, self.items, list(ids),
                         with_payload=True, with_vectors=True)
        return [self._record(p) for p in pts]

    def stored_validity(self, point_ids: list[str]) -> dict[str, tuple[int, int]]:
        if not point_ids:
            return {}
        pts = self._call("retrieve", self.client.retrieve, self.items, list(point_ids),
                         with_payload=["asif_from", "asif_to"], with_vectors=False)
        return {str(p.id): (int(p.payload["asif_from"]), int(p.payload["asif_to"])) for p in pts}

    def stored_anchor_versions(self, ids: list[int]) -> dict[int, tuple[int, int]]:
        if not ids:
            return {}
        pts = self._call("retrieve", self.client.retrieve, self.anchors, [int(i) for i in ids],
                         with_payload=["added_version", "removed_version"], with_vectors=False)
        return {int(p.id): (int(p.payload.get("added_version", 0)),
                            int(p.payload.get("removed_version", FOREVER))) for p in pts}

    def heads(self, items: list[str]) -> dict[str, ItemRecord]:
        if not items:
            return {}
        m = self._m
        flt = m.Filter(must=[m.FieldCondition(key="asif_item", match=m.MatchAny(any=list(items))),
                             m.FieldCondition(key="asif_to", range=m.Range(gte=FOREVER))])
        out, offset = {}, None
        while True:
            pts, offset = self._call("scroll", self.client.scroll, self.items, scroll_filter=flt,
                                     limit=1024, offset=offset, with_payload=True, with_vectors=True)
            for p in pts:
                r = self._record(p)
                out[r.item] = r
            if offset is None:
                return out

    def points_at(self, items: list[str], version: int) -> dict[str, ItemRecord]:
        if not items:
            return {}
        m = self._m
        flt = m.Filter(must=[m.FieldCondition(key="asif_item", match=m.MatchAny(any=list(items))),
                             self._filter(None, version)])
        out, offset = {}, None
        while True:
            pts, offset = self._call("scroll", self.client.scroll, self.items, scroll_filter=flt,
                                     limit=1024, offset=offset, with_payload=True, with_vectors=True)
            out.update({r.item: r for r in (self._record(p) for p in pts)})
            if offset is None:
                return out

    def set_valid_to(self, point_ids: list[str], version: int) -> None:
        if point_ids:
            self._call("set_payload", self.client.set_payload, self.items,
                       payload={"asif_to": int(version)}, points=list(point_ids), wait=True)

    def delete_items(self, ids: list[str]) -> None:
        self._call("delete items", self.client.delete, self.items,
                   points_selector=self._m.PointIdsList(points=list(ids)), wait=True)

    def delete_expired(self, version: int, anchor_version: int | None = None) -> int:
        m = self._m
        av = version if anchor_version is None else anchor_version
        flt = m.Filter(must=[m.FieldCondition(key="asif_to", range=m.Range(lte=version))])
        n = int(self._call("count", self.client.count, self.items, count_filter=flt, exact=True).count)
        self._call("delete", self.client.delete, self.items,
                   points_selector=m.FilterSelector(filter=flt), wait=True)
        aflt = m.Filter(must=[m.FieldCondition(key="removed_version", range=m.Range(lte=av))])
        self._call("delete", self.client.delete, self.anchors,
                   points_selector=m.FilterSelector(filter=aflt), wait=True)
        return n

    def _filter(self, flt: Filter | None, version: int | None):
        m = self._m
        user = filters.to_qdrant(filters.parse(flt), m, payload_key)
        must = [user] if user is not None else []
        if version is not None:
            must += [m.FieldCondition(key="asif_from", range=m.Range(lte=version)),
                     m.FieldCondition(key="asif_to", range=m.Range(gt=version))]
        return m.Filter(must=must) if must else None

    def count_items(self, flt: Filter | None = None, version: int | None = None) -> int:
        return int(self._call("count", self.client.count, self.items,
                              count_filter=self._filter(flt, version), exact=True).count)

    def search(self, indices, values, limit, flt=None, version=None) -> list[Hit]:
        q = self._m.SparseVector(indices=np.asarray(indices).tolist(),
                                 values=np.asarray(values, np.float32).tolist())
        res = self._call("search", self.client.query_points, self.items, query=q, using="rel",
                         limit=limit, query_filter=self._filter(flt, version), with_payload=True)
        return [point_hit(p) for p in res.points]

    def points_near(self, modality, queries, threshold, kth_range, version):
        m = self._m
        lo, hi = kth_range
        rng = m.Range(gte=None if not np.isfinite(lo) else float(lo),
                      lt=None if not np.isfinite(hi) else float(hi))
        flt = m.Filter(must=[m.FieldCondition(key="asif_modality",
                                              match=m.MatchValue(value=modality)),
                             m.FieldCondition(key="asif_kth", range=rng),
                             self._filter(None, version)])
        n = int(self._call("count", self.client.count, self.items, count_filter=flt,
                           exact=True).count)
        if not n or not len(queries):
            return set()
        out: set[str] = set()
        for s in range(0, len(queries), 64):
            reqs = [m.QueryRequest(query=np.asarray(v, np.float32).tolist(),
                                   using=f"emb_{modality}", filter=flt, limit=n,
                                   score_threshold=float(threshold),
                                   params=m.SearchParams(exact=True), with_payload=False)
                    for v in queries[s:s + 64]]
            for res in self._call("search", self.client.query_batch_points, self.items, reqs):
                out.update(str(p.id) for p in res.points)
        return out

    def points_holding(self, anchor_ids, version):
        m = self._m
        flt = self._filter(None, version)
        n = int(self._call("count", self.client.count, self.items, count_filter=flt,
                           exact=True).count)
        out: set[str] = set()
        for a in anchor_ids:
            res = self._call("search", self.client.query_points, self.items,
                             query=m.SparseVector(indices=[int(a)], values=[1.0]), using="rel",
                             limit=max(n, 1), query_filter=flt, with_payload=False)
            out.update(str(p.id) for p in res.points if p.score > 0)
        return out

    def search_two_stage(self, full, cand, candidates, limit, flt=None, version=None):
        # the Query API: a prefetch on ``cand``, rescored by the outer query on ``rel``
        if not self.candidate_keep():
            raise NotImplementedError("this index has no candidate vectors")
        m = self._m

        def vec(iv):
            return m.SparseVector(indices=np.asarray(iv[0]).tolist(),
                                  values=np.asarray(iv[1], np.float32).tolist())

        flt_q = self._filter(flt, version)
        res = self._call("search", self.client.query_points, self.items,
                         prefetch=m.Prefetch(query=vec(cand), using="cand", limit=int(candidates),
                                             filter=flt_q),
                         query=vec(full), using="rel", limit=limit, query_filter=flt_q,
                         with_payload=True)
        return [point_hit(p) for p in res.points if p.score > 0]

    def scroll_items(self, batch: int = 256, version: int | None = None,
                     id_range=None) -> Iterator[list[ItemRecord]]:
        # Qdrant scrolls in id order: a range starts at its low id and ends at its high one
        offset = id_range[0] if id_range else None
        flt = self._filter(None, version)
        while True:
            pts, offset = self._call("scroll", self.client.scroll, self.items, scroll_filter=flt,
                                     limit=batch, offset=offset, with_payload=True, with_vectors=True)
            recs = [self._record(p) for p in pts]
            kept = [r for r in recs if in_range(r.id, id_range)]
            if kept:
                yield kept
            if offset is None or (id_range and id_range[1] and str(offset) >= id_range[1]):
                return

    def close(self) -> None:
        self.client.close()
