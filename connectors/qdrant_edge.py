"""Qdrant Edge: Qdrant's own Rust storage engine (segments, the sparse inverted index, payload
indexes, WAL, optimizers) in-process on a directory, from ``qdrant-edge-py``.

This is the embedded Qdrant backend (``--backend qdrant --path DIR``); servers go through
``connectors.qdrant`` (qdrant-client). One index is three shards in ``DIR``:
``NAME_meta/``, ``NAME_anchors/``, ``NAME_items/``. A shard's WAL is locked by the process
that opens it, so one process at a time writes an embedded index (serve it, or use a server,
for several).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from asif_index._optional import require
from asif_index.anchors import AnchorManifest
from asif_index.errors import BackendError, BackendUnavailableError, CollectionError
from connectors import filters
from connectors.base import (
    check_index_name,
    FOREVER,
    AnchorRecord,
    Filter,
    Hit,
    ItemRecord,
    RAW_DTYPE_KEY,
    VectorStore,
    candidate_entries,
    in_range,
    two_stage_keep,
)
from connectors.qdrant_layout import (
    BOOL_TWIN,
    SPARSE_FULL_SCAN,
    item_payload,
    item_record,
    payload_key,
    point_hit,
    stored_rel,
)

_BATCH = 256  # points per update operation
# Qdrant Edge writes through memory-mapped, preallocated files: running out of disk there is a
# SIGBUS that kills the process, not an error. So writes check free space first and refuse
# below this margin (plus what the write itself needs).
MIN_FREE_BYTES = 256 * 2**20
# Sparse storage for the relative vectors: "float32" (exact), or "float16" / "uint8" (smaller,
# approximate; see benchmarks/scale.py for what they cost in recall).
SPARSE_DATATYPES = ("float32", "float16", "uint8")


def _field_indexes(manifest) -> dict[str, str]:
    """Payload indexes of the declared fields (a bool's filters match its keyword twin)."""
    from connectors.filters import DATE_TWIN
    from connectors.qdrant_layout import BOOL_TWIN
    from connectors.schema import QDRANT_KIND, declared

    out = {}
    for k, t in declared(manifest).items():
        if t == "bool":
            out[BOOL_TWIN + k] = "Keyword"
        elif t == "datetime":  # ranges compare the seconds twin, equality the text
            out.update({k: "Keyword", DATE_TWIN + k: "Float"})
        else:
            out[k] = QDRANT_KIND[t]
    return out


def _doc_id(key: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"asif-doc:{key}"))


class _Gate:
    """Many shard calls at once, or one shard reopen alone (a readers-writer lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _return_freed_memory() -> None:
    """Give memory the engine freed back to the OS (glibc keeps freed pages otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class QdrantEdgeStore(VectorStore):
    """``NAME_items`` points hold ``rel`` (sparse, dot product) and ``emb_<modality>``
    (dense); payload carries the item id, validity range, modality and k-th similarity, each
    with a payload index."""

    backend = "qdrant"
    engine = "qdrant-edge"

    # Edge runs no background optimizer: everything written stays in one appendable segment,
    # held in RAM, until optimize() turns it into indexed, memory-mapped segments. Measured:
    # ~25 KB of resident memory per item written without it (10^6 items would need ~25 GB).
    OPTIMIZE_EVERY = 100_000

    def __init__(self, name: str = "asif", *, path: str | Path = "asif-qdrant",
                 sparse_datatype: str = "float32", optimize_every: int | None = None,
                 **_ignored: Any) -> None:
        self._q = require("qdrant_edge", "the embedded Qdrant engine (pip install qdrant-edge-py)")
        if sparse_datatype not in SPARSE_DATATYPES:
            from asif_index.errors import ConfigError

            raise ConfigError(f"sparse datatype '{sparse_datatype}' is not one of "
                              f"{', '.join(SPARSE_DATATYPES)}")
        self.name = check_index_name(name, self.backend)
        self.root = Path(path)
        self.where = str(self.root)
        self.sparse_datatype = sparse_datatype
        self.optimize_every = optimize_every or self.OPTIMIZE_EVERY
        self._written = 0  # items written since the last optimize
        self._shards: dict[str, Any] = {}
        self._gate = _Gate()
        self._lock = threading.RLock()  # opening and closing shards

    # ----------------------------------------------------------------------- shards
    def _call(self, what: str, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # qdrant_edge raises bare Exception with the engine's text
            text = " ".join(str(exc).split())
            if "WouldBlock" in text or "Resource temporarily unavailable" in text:
                raise BackendUnavailableError(
                    f"Qdrant Edge index at {self.where} is open in another process (its WAL is "
                    "locked); stop that process, or run a Qdrant server for shared access") from exc
            if "No space left" in text or "Read-only file system" in text or \
                    "Permission denied" in text:
                raise BackendError(f"Qdrant Edge {what} at {self.where} cannot write ({text[:200]}); "
                                   "free disk space or choose a writable --path; stored data is "
                                   "unchanged") from exc
            raise BackendError(f"Qdrant Edge {what} at {self.where} failed: {text[:400]}") from exc

    def _on(self, coll: str, what: str, method: str, *args: Any) -> Any:
        """Call a method of a collection's open shard; optimize() waits for calls in flight
        before it reopens a shard, and calls wait while it does."""
        with self._gate.shared():
            return self._call(what, getattr(self._shard(coll), method), *args)

    def _check_space(self, need: int = 0) -> None:
        probe = self.root if self.root.exists() else self.root.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < MIN_FREE_BYTES + need:
            raise BackendError(
                f"only {free / 2**20:.0f} MB free on the disk of {self.where}; Qdrant Edge needs "
                f"{(MIN_FREE_BYTES + need) / 2**20:.0f} MB for this write (it would crash on a "
                "full disk): free some space or choose another --path; nothing was written")

    def collection_names(self) -> list[str]:
        return sorted(d.name for d in self.root.iterdir() if d.is_dir()) if self.root.is_dir() else []

    def _dir(self, coll: str) -> Path:
        return self.root / coll

    def _shard(self, coll: str):
        """The open shard of a collection (loaded on first use)."""
        with self._lock:
            s = self._shards.get(coll)
            if s is None:
                d = self._dir(coll)
                if not d.is_dir():
                    raise CollectionError(f"index '{self.name}' does not exist in Qdrant Edge at "
                                          f"{self.where} (no {coll}/); create it with "
                                          "'asif-index init'")
                s = self._call(f"open {coll}", self._q.EdgeShard.load, str(d))
                self._shards[coll] = s
            return s

    def _new_shard(self, coll: str, config, indexes: dict[str, str]) -> None:
        q = self._q
        d = self._dir(coll)
        if d.exists():
            shutil.rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        s = self._call(f"create {coll}", q.EdgeShard.create, str(d), config)
        for field, kind in indexes.items():
            self._call("create payload index", s.update,
                       q.UpdateOperation.create_field_index(field, getattr(q.PayloadSchemaType, kind)))
        self._shards[coll] = s

    def _update(self, coll: str, op) -> None:
        self._on(coll, f"write {coll}", "update", op)

    def exists(self) -> bool:
        meta = self._dir(self.meta)
        return meta.is_dir() and any(meta.iterdir())

    def create(self, manifest: AnchorManifest, recreate: bool = False) -> None:
        q = self._q
        if self.exists():
            if not recreate:
                raise CollectionError(
                    f"index '{self.name}' already exists in Qdrant Edge at {self.where}; open it, "
                    "or pass recreate=True (--recreate) to replace it")
            self.drop()
        if self.root.exists() and not self.root.is_dir():
            raise CollectionError(f"{self.where} is a file, not a folder; choose another --path")
        self._check_space(3 * 64 * 2**20)
        vp = q.EdgeVectorParams
        self._new_shard(self.meta, q.EdgeConfig(vectors={"v": vp(size=1, distance=q.Distance.Dot)}),
                        {"kind": "Keyword"})
        # Dot, not Cosine: Cosine re-normalises stored vectors, and anchors must read back
        # bit for bit (they are unit vectors already).
        self._new_shard(self.anchors, q.EdgeConfig(vectors={
            "image": vp(size=manifest.image_dim, distance=q.Distance.Dot),
            "text": vp(size=manifest.text_dim, distance=q.Distance.Dot)}),
            {"added_version": "Integer", "removed_version": "Integer"})
        dtype = {"float32": q.VectorStorageDatatype.Float32,
                 "float16": q.VectorStorageDatatype.Float16,
                 "uint8": q.VectorStorageDatatype.Uint8}[self.sparse_datatype]
        # The raw embeddings are read back only to re-project items (anchor updates): on disk,
        # not in RAM; the sparse index, which every search reads, stays resident.
        cold = q.Memory.Cold
        raw = (q.VectorStorageDatatype.Float16 if manifest.extra.get(RAW_DTYPE_KEY) == "float16"
               else q.VectorStorageDatatype.Float32)
        self._new_shard(self.items, q.EdgeConfig(
            vectors={"emb_image": vp(size=manifest.image_dim, distance=q.Distance.Dot,
                                     memory=cold, datatype=raw),
                     "emb_text": vp(size=manifest.text_dim, distance=q.Distance.Dot,
                                    memory=cold, datatype=raw)},
            # Cached: the sparse index is memory-mapped and warmed into the page cache, so it
            # is served from RAM while it fits and the OS may evict it when it does not.
            sparse_vectors={"rel": q.EdgeSparseVectorParams(datatype=dtype,
                                                            memory=q.Memory.Cached,
                                                            full_scan_threshold=SPARSE_FULL_SCAN),
                            # the first stage's vectors (two-stage search); absent in indexes
                            # made without one
                            **({"cand": q.EdgeSparseVectorParams(
                                datatype=dtype, memory=q.Memory.Cached,
                                full_scan_threshold=SPARSE_FULL_SCAN)}
                               if two_stage_keep(manifest) else {})}),
            {"asif_item": "Keyword", "asif_modality": "Keyword", "asif_from": "Integer",
             "asif_to": "Integer", "asif_kth": "Float", **_field_indexes(manifest)})
        manifest.extra["sparse_datatype"] = self.sparse_datatype
        self.write_manifest(manifest)
        self._candidate_keep = None

    def drop(self) -> None:
        with self._lock:
            for c in (self.items, self.anchors, self.meta):
                s = self._shards.pop(c, None)
                if s is not None:
                    s.close()
                if self._dir(c).exists():
                    shutil.rmtree(self._dir(c))

    def flush(self) -> None:
        with self._gate.shared():
            for s in list(self._shards.values()):
                self._call("flush", s.flush)

    def optimize(self) -> bool:
        """Merge segments and build the sparse index for what was written (Edge runs its
        optimizers only when asked); -> whether anything changed.

        Each shard is then closed and loaded again: a freshly optimized segment keeps
        what it built on the heap (measured: 17.5 KB per item, never returned, so 10^6 items
        ran this 2-core, 24 GB machine out of memory), while a loaded one memory-maps its
        sparse index and vectors (44 MB resident at 60,000 items, flat)."""
        changed = False
        for c in (self.items, self.anchors):
            if not self._dir(c).is_dir():
                continue
            changed |= bool(self._on(c, "optimize", "optimize"))
            # reopened even when optimize() says nothing changed: Edge also reports False
            # for segments it rewrote below its indexing threshold
            with self._gate.exclusive(), self._lock:
                s = self._shards.pop(c, None)
                if s is not None:
                    self._call(f"close {c}", s.close)  # loaded again on next use
        _return_freed_memory()
        return changed

    def close(self) -> None:
        with self._lock:
            for s in self._shards.values():
                try:
                    s.close()
                except Exception:  # closing twice, or after a failed write
                    pass
            self._shards.clear()

    # ------------------------------------------------------------------------- docs
    def get_doc(self, key: str) -> dict | None:
        recs = self._on(self.meta, "read", "retrieve", [_doc_id(key)], True, False)
        return json.loads(recs[0].payload["doc"]) if recs else None

    def put_doc(self, key: str, doc: dict | None) -> None:
        q = self._q
        if doc is None:
            self._update(self.meta, q.UpdateOperation.delete_points([_doc_id(key)]))
            return
        self._update(self.meta, q.UpdateOperation.upsert_points([q.Point(
            _doc_id(key), {"v": [1.0]},
            {"key": key, "kind": key.split(":", 1)[0], "doc": json.dumps(doc)})]))

    def list_docs(self, kind: str) -> dict[str, dict]:
        q = self._q
        flt = q.Filter(must=[q.FieldCondition("kind", match=q.MatchValue(kind))])
        return {r.payload["key"]: json.loads(r.payload["doc"])
                for r in self._scroll(self.meta, flt, 256, False)
                if r.payload["key"].startswith(kind + ":")}

    def _scroll(self, coll: str, flt, batch: int, vectors: bool, offset=None) -> Iterator:
        q = self._q
        while True:  # the shard is looked up per page: optimize() may reopen it in between
            recs, offset = self._on(coll, "scroll", "scroll", q.ScrollRequest(
                offset=offset, limit=batch, filter=flt, with_payload=True, with_vector=vectors))
            yield from recs
            if offset is None:
                return

    # ---------------------------------------------------------------------- anchors
    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None:
        q = self._q
        if anchors:
            self._check_space(3 * len(anchors) * 4 * (len(anchors[0].image) + len(anchors[0].text)))
        pts = [q.Point(int(a.id), {"image": a.image.tolist(), "text": a.text.tolist()},
                       {"caption": a.caption, "image_ref": a.image_ref, "source": a.source,
                        "added_at": float(a.added_at), "key": a.key,
                        "added_version": int(a.added_version),
                        "removed_version": int(a.removed_version)})
               for a in anchors]
        for s in range(0, len(pts), _BATCH):
            self._update(self.anchors, q.UpdateOperation.upsert_points(pts[s:s + _BATCH]))

    def delete_anchors(self, ids: list[int]) -> None:
        if ids:
            self._update(self.anchors, self._q.UpdateOperation.delete_points([int(i) for i in ids]))

    def fetch_anchors(self, version: int | None = None) -> list[AnchorRecord]:
        q = self._q
        flt = None
        if version is not None:
            flt = q.Filter(must=[
                q.FieldCondition("added_version", range=q.RangeFloat(lte=version)),
                q.FieldCondition("removed_version", range=q.RangeFloat(gt=version))])
        out = []
        for p in self._scroll(self.anchors, flt, 2048, True):
            pl = p.payload
            out.append(AnchorRecord(int(p.id), np.asarray(p.vector["image"], np.float32),
                                    np.asarray(p.vector["text"], np.float32), pl["caption"],
                                    pl["image_ref"], pl["source"], float(pl["added_at"]),
                                    pl.get("key", ""), int(pl["added_version"]),
                                    int(pl["removed_version"])))
        out.sort(key=lambda a: a.id)
        return out

    # ------------------------------------------------------------------------ items
    def _point(self, it: ItemRecord):
        q = self._q
        payload = item_payload(it)
        vectors = {f"emb_{it.modality}": it.embedding.tolist(),
                   "rel": q.SparseVector(*stored_rel(it))}
        keep = self.candidate_keep()
        if keep:
            ci, cv = candidate_entries(it.sparse_indices, it.sparse_values, keep)
            vectors["cand"] = q.SparseVector(ci.tolist(), np.asarray(cv, np.float32).tolist())
        return q.Point(it.id, vectors, payload)

    def upsert_items(self, items: list[ItemRecord]) -> None:
        q = self._q
        if items:
            per = 12 * len(items[0].sparse_indices) + 4 * len(items[0].embedding) + 1024
            self._check_space(3 * per * len(items))  # WAL, segment, index
        for s in range(0, len(items), _BATCH):
            self._update(self.items, q.UpdateOperation.upsert_points(
                [self._point(it) for it in items[s:s + _BATCH]]))
        self._written += len(items)
        if self._written >= self.optimize_every:
            self._written = 0
            self.optimize()

    def _record(self, p) -> ItemRecord:
        return item_record(p)

    def fetch_items(self, ids: list[str]) -> list[ItemRecord]:
        if not ids:
            return []
        recs = self._on(self.items, "read", "retrieve", list(ids), True, True)
        return [self._record(p) for p in recs]

    def stored_validity(self, point_ids: list[str]) -> dict[str, tuple[int, int]]:
        if not point_ids:
            return {}
        recs = self._on(self.items, "read", "retrieve", list(point_ids), True, False)
        return {str(p.id): (int(p.payload["asif_from"]), int(p.payload["asif_to"])) for p in recs}

    def stored_anchor_versions(self, ids: list[int]) -> dict[int, tuple[int, int]]:
        if not ids:
            return {}
        recs = self._on(self.anchors, "read", "retrieve", [int(i) for i in ids], True, False)
        return {int(p.id): (int(p.payload["added_version"]), int(p.payload["removed_version"]))
                for p in recs}

    def heads(self, items: list[str]) -> dict[str, ItemRecord]:
        if not items:
            return {}
        q = self._q
        flt = q.Filter(must=[q.FieldCondition("asif_item", match=q.MatchAny(list(items))),
                             q.FieldCondition("asif_to", range=q.RangeFloat(gte=FOREVER))])
        return {r.item: r for r in (self._record(p) for p in self._scroll(self.items, flt, 1024, True))}

    def points_at(self, items: list[str], version: int) -> dict[str, ItemRecord]:
        if not items:
            return {}
        q = self._q
        flt = q.Filter(must=[q.FieldCondition("asif_item", match=q.MatchAny(list(items))),
                             self._filter(None, version)])
        return {r.item: r for r in (self._record(p) for p in self._scroll(self.items, flt, 1024,
                                                                             True))}

    def set_valid_to(self, point_ids: list[str], version: int) -> None:
        if point_ids:
            self._update(self.items, self._q.UpdateOperation.set_payload(
                list(point_ids), {"asif_to": int(version)}))

    def delete_items(self, ids: list[str]) -> None:
        if ids:
            self._update(self.items, self._q.UpdateOperation.delete_points(list(ids)))

    def delete_expired(self, version: int, anchor_version: int | None = None) -> int:
        q = self._q
        av = version if anchor_version is None else anchor_version
        flt = q.Filter(must=[q.FieldCondition("asif_to", range=q.RangeFloat(lte=version))])
        n = int(self._on(self.items, "count", "count", q.CountRequest(True, flt)))
        if n:
            self._update(self.items, q.UpdateOperation.delete_points_by_filter(flt))
        aflt = q.Filter(must=[q.FieldCondition("removed_version", range=q.RangeFloat(lte=av))])
        self._update(self.anchors, q.UpdateOperation.delete_points_by_filter(aflt))
        return n

    def _filter(self, flt: Filter | None, version: int | None):
        q = self._q
        user = filters.to_qdrant(filters.parse(flt), q, payload_key, edge=True,
                                  bool_twin=BOOL_TWIN)
        must = [user] if user is not None else []
        if version is not None:
            must += [q.FieldCondition("asif_from", range=q.RangeFloat(lte=version)),
                     q.FieldCondition("asif_to", range=q.RangeFloat(gt=version))]
        return q.Filter(must=must) if must else None

    def count_items(self, flt: Filter | None = None, version: int | None = None) -> int:
        if not self._dir(self.items).is_dir():
            return 0
        return int(self._on(self.items, "count", "count",
                              self._q.CountRequest(True, self._filter(flt, version))))

    def search(self, indices, values, limit, flt=None, version=None) -> list[Hit]:
        q = self._q
        vec = q.SparseVector(np.asarray(indices).tolist(), np.asarray(values, np.float32).tolist())
        res = self._on(self.items, "search", "query", q.QueryRequest(
            limit=int(limit), query=q.Query.Nearest(vec, using="rel"),
            filter=self._filter(flt, version), with_payload=True))
        return [point_hit(p) for p in res if p.score > 0]

    def points_near(self, modality, queries, threshold, kth_range, version):
        q = self._q
        lo, hi = kth_range
        flt = q.Filter(must=[q.FieldCondition("asif_modality", match=q.MatchValue(modality)),
                             q.FieldCondition("asif_kth", range=q.RangeFloat(gte=lo, lt=hi)),
                             self._filter(None, version)])
        n = int(self._on(self.items, "count", "count", q.CountRequest(True, flt)))
        if not n or not len(queries):
            return set()
        out: set[str] = set()
        params = q.SearchParams(exact=True)  # brute force: a threshold search that misses none
        must = list(flt.must)
        for s in range(0, len(queries), 64):
            # points found by earlier batches are left out: many new anchors near the same
            # items would otherwise return each of them once per anchor
            f = q.Filter(must=must, must_not=[q.HasIdCondition(set(out))]) if out else flt
            batch = q.QueryBatchRequest([q.QueryRequest(
                limit=n, query=q.Query.Nearest(np.asarray(v, np.float32).tolist(),
                                               using=f"emb_{modality}"),
                filter=f, score_threshold=float(threshold), params=params, with_payload=False)
                for v in queries[s:s + 64]])
            for res in self._on(self.items, "search", "query_batch", batch):
                out.update(str(p.id) for p in res)
        return out

    def points_holding(self, anchor_ids, version):
        q = self._q
        flt = self._filter(None, version)
        n = int(self._on(self.items, "count", "count", q.CountRequest(True, flt)))
        out: set[str] = set()
        for a in anchor_ids:  # one posting list each: every point holding it scores > 0
            res = self._on(self.items, "search", "query", q.QueryRequest(
                limit=max(n, 1), query=q.Query.Nearest(q.SparseVector([int(a)], [1.0]),
                                                       using="rel"),
                filter=flt, with_payload=False))
            out.update(str(p.id) for p in res if p.score > 0)
        return out

    def search_two_stage(self, full, cand, candidates, limit, flt=None, version=None):
        # Qdrant's query planner: the prefetch finds the candidates on ``cand``, the outer
        # query rescores only those with the full vector ``rel`` (including the fold entry)
        if not self.candidate_keep():
            raise NotImplementedError("this index has no candidate vectors")
        q = self._q
        flt_q = self._filter(flt, version)

        def vec(iv):
            return q.SparseVector(np.asarray(iv[0]).tolist(),
                                  np.asarray(iv[1], np.float32).tolist())

        res = self._on(self.items, "search", "query", q.QueryRequest(
            limit=int(limit), query=q.Query.Nearest(vec(full), using="rel"),
            prefetches=[q.Prefetch(int(candidates), query=q.Query.Nearest(vec(cand), using="cand"),
                                   filter=flt_q)],
            filter=flt_q, with_payload=True))
        return [point_hit(p) for p in res if p.score > 0]

    def scroll_items(self, batch: int = 256, version: int | None = None,
                     id_range=None) -> Iterator[list[ItemRecord]]:
        out: list[ItemRecord] = []
        # the shard scrolls in id order: a range starts at its low id and ends at its high one
        start, end = id_range if id_range else (None, None)
        for p in self._scroll(self.items, self._filter(None, version), batch, True,
                              offset=start):
            rec = self._record(p)
            if end is not None and rec.id >= end:
                break
            if not in_range(rec.id, id_range):
                continue
            out.append(rec)
            if len(out) == batch:
                yield out
                out = []
        if out:
            yield out
