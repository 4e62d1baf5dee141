"""Qdrant: local mode (``path=``, embedded) or a server (``url=``, API key)."""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from asif_index._optional import require
from asif_index.anchors import AnchorManifest
from asif_index.errors import CollectionError
from connectors.base import AnchorRecord, Filter, Hit, ItemRecord, VectorStore, with_retries

META_ID = "00000000-0000-0000-0000-000000000001"
_RESERVED = {"asif_modality", "asif_kth", "asif_version"}


class QdrantStore(VectorStore):
    """``NAME_items`` holds ``rel`` (sparse, dot product) and ``emb`` (dense) per point."""

    backend = "qdrant"

    def __init__(self, name: str = "asif", *, path: str | None = None, url: str | None = None,
                 api_key: str | None = None, timeout: float = 30.0) -> None:
        qc = require("qdrant_client", "the Qdrant connector")
        self._m = require("qdrant_client.models", "the Qdrant connector")
        self.name = name
        if url:
            self.client = qc.QdrantClient(url=url, api_key=api_key, timeout=int(timeout))
            where = url
        else:
            self.client = qc.QdrantClient(path=path or ":memory:")
            where = path or ":memory:"
        self.where = where
        transient: tuple = (ConnectionError, TimeoutError)
        backend: tuple = ()
        try:
            from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

            transient = transient + (ResponseHandlingException,)
            backend = (UnexpectedResponse, ValueError)
        except ImportError:  # pragma: no cover
            pass
        self._call = lambda what, fn, *a, **kw: with_retries(
            fn, lambda e: isinstance(e, transient), f"Qdrant {what} on {where}", backend)(*a, **kw)
        self._call("connect", self.client.get_collections)

    # names ---------------------------------------------------------------------
    @property
    def items(self) -> str:
        return f"{self.name}_items"

    @property
    def anchors(self) -> str:
        return f"{self.name}_anchors"

    @property
    def meta(self) -> str:
        return f"{self.name}_meta"

    def _has(self, coll: str) -> bool:
        return bool(self._call("collection_exists", self.client.collection_exists, coll))

    # collections -----------------------------------------------------------------
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
        self._call("create", self.client.create_collection, self.meta,
                   vectors_config=m.VectorParams(size=1, distance=m.Distance.DOT))
        self._call("create", self.client.create_collection, self.anchors, vectors_config={
            "image": m.VectorParams(size=manifest.image_dim, distance=m.Distance.COSINE),
            "text": m.VectorParams(size=manifest.text_dim, distance=m.Distance.COSINE),
        })
        self._call("create", self.client.create_collection, self.items,
                   vectors_config={"emb_image": m.VectorParams(size=manifest.image_dim, distance=m.Distance.COSINE),
                                   "emb_text": m.VectorParams(size=manifest.text_dim, distance=m.Distance.COSINE)},
                   sparse_vectors_config={"rel": m.SparseVectorParams()})
        if not self.where.startswith(":memory:") and "://" in self.where:
            self._call("index", self.client.create_payload_index, self.items,
                       field_name="asif_modality", field_schema=m.PayloadSchemaType.KEYWORD)
        self.write_manifest(manifest)

    def drop(self) -> None:
        for c in (self.items, self.anchors, self.meta):
            if self._has(c):
                self._call("drop", self.client.delete_collection, c)

    def read_manifest(self) -> AnchorManifest | None:
        if not self.exists():
            return None
        pts = self._call("retrieve", self.client.retrieve, self.meta, [META_ID], with_payload=True)
        return AnchorManifest(**json.loads(pts[0].payload["manifest"])) if pts else None

    def write_manifest(self, manifest: AnchorManifest) -> None:
        from dataclasses import asdict

        pt = self._m.PointStruct(id=META_ID, vector=[1.0],
                                 payload={"manifest": json.dumps(asdict(manifest))})
        self._call("upsert", self.client.upsert, self.meta, [pt], wait=True)

    # anchors -----------------------------------------------------------------------
    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None:
        pts = [self._m.PointStruct(
            id=int(a.id), vector={"image": a.image.tolist(), "text": a.text.tolist()},
            payload={"caption": a.caption, "image_ref": a.image_ref, "source": a.source,
                     "anchor_id": int(a.id), "added_at": a.added_at, "key": a.key})
               for a in anchors]
        for s in range(0, len(pts), 256):
            self._call("upsert anchors", self.client.upsert, self.anchors, pts[s:s + 256], wait=True)

    def delete_anchors(self, ids: list[int]) -> None:
        self._call("delete anchors", self.client.delete, self.anchors,
                   points_selector=self._m.PointIdsList(points=[int(i) for i in ids]), wait=True)

    def fetch_anchors(self) -> list[AnchorRecord]:
        out, offset = [], None
        while True:
            pts, offset = self._call("scroll anchors", self.client.scroll, self.anchors, limit=1024,
                                     offset=offset, with_payload=True, with_vectors=True)
            for p in pts:
                out.append(AnchorRecord(int(p.id), np.asarray(p.vector["image"], np.float32),
                                        np.asarray(p.vector["text"], np.float32), p.payload["caption"],
                                        p.payload["image_ref"], p.payload["source"], p.payload["added_at"],
                                        p.payload.get("key", "")))
            if offset is None:
                break
        out.sort(key=lambda a: a.id)
        return out

    # items ---------------------------------------------------------------------------
    def upsert_items(self, items: list[ItemRecord]) -> None:
        m = self._m
        pts = []
        for it in items:
            payload = {k: v for k, v in it.payload.items() if k not in _RESERVED}
            payload.update(asif_modality=it.modality, asif_kth=float(it.kth_similarity),
                           asif_version=int(it.anchor_version))
            pts.append(m.PointStruct(id=it.id, vector={
                f"emb_{it.modality}": it.embedding.tolist(),
                "rel": m.SparseVector(indices=it.sparse_indices.tolist(),
                                      values=it.sparse_values.tolist())}, payload=payload))
        self._call("upsert items", self.client.upsert, self.items, pts, wait=True)

    def _record(self, p) -> ItemRecord:
        mod = p.payload["asif_modality"]
        rel = p.vector["rel"]
        payload = {k: v for k, v in p.payload.items() if k not in _RESERVED}
        return ItemRecord(str(p.id), mod, np.asarray(rel.indices, np.int64),
                          np.asarray(rel.values, np.float32),
                          np.asarray(p.vector[f"emb_{mod}"], np.float32),
                          float(p.payload["asif_kth"]), int(p.payload["asif_version"]), payload)

    def fetch_items(self, ids: list[str]) -> list[ItemRecord]:
        pts = self._call("retrieve", self.client.retrieve, self.items, ids, with_payload=True,
                         with_vectors=True)
        return [self._record(p) for p in pts]

    def existing_ids(self, ids: list[str]) -> set[str]:
        pts = self._call("retrieve", self.client.retrieve, self.items, ids, with_payload=False,
                         with_vectors=False)
        return {str(p.id) for p in pts}

    def delete_items(self, ids: list[str]) -> None:
        self._call("delete items", self.client.delete, self.items,
                   points_selector=self._m.PointIdsList(points=list(ids)), wait=True)

    def _filter(self, flt: Filter | None):
        if not flt:
            return None
        m = self._m
        return m.Filter(must=[m.FieldCondition(key="asif_modality" if k == "modality" else k,
                                               match=m.MatchValue(value=v)) for k, v in flt.items()])

    def count_items(self, flt: Filter | None = None) -> int:
        return int(self._call("count", self.client.count, self.items,
                              count_filter=self._filter(flt), exact=True).count)

    def search(self, indices, values, limit, flt=None) -> list[Hit]:
        q = self._m.SparseVector(indices=np.asarray(indices).tolist(),
                                 values=np.asarray(values, np.float32).tolist())
        res = self._call("search", self.client.query_points, self.items, query=q, using="rel",
                         limit=limit, query_filter=self._filter(flt), with_payload=True)
        return [Hit(str(p.id), float(p.score), p.payload["asif_modality"],
                    {k: v for k, v in p.payload.items() if k not in _RESERVED}) for p in res.points]

    def scroll_items(self, batch: int = 256) -> Iterator[list[ItemRecord]]:
        offset = None
        while True:
            pts, offset = self._call("scroll", self.client.scroll, self.items, limit=batch,
                                     offset=offset, with_payload=True, with_vectors=True)
            if pts:
                yield [self._record(p) for p in pts]
            if offset is None:
                return

    def close(self) -> None:
        self.client.close()
