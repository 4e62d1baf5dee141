"""Milvus: Milvus Lite (a ``.db`` file, embedded) or a server (``uri=http://...``, token).

Tested in CI against milvus-lite 2.5.1, the real Milvus C++ engine (3.x is a pure-Python
rewrite). Milvus Lite has no aliases (create_alias answers UNIMPLEMENTED); the store then keeps
alias records in its meta collection.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from asif_index._optional import require
from asif_index.anchors import AnchorManifest
from asif_index.errors import BackendError, BackendUnavailableError, CollectionError, ConfigError
from asif_index.methods.qbnorm_fold import split_fold, with_fold
from connectors import filters
from connectors.base import (
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
)

_MAX_RPC_ITEMS = 512  # rows per upsert RPC; far below Milvus' 64 MB cap for d <= 4096
_LITE_NAME = re.compile(r"^[a-zA-Z0-9.\-_]+$")  # what milvus-lite accepts as a file name
STORAGE_VERSION = 2  # items keyed by a physical pk per write (see upsert_items)


def _descending_nonce() -> str:
    """Sorts before every nonce this host made earlier. Query iterators page by primary key,
    so a row rewritten behind an update's scroll cursor lands behind it again (id prefix, then
    a smaller nonce) and is not scanned twice."""
    return f"{(1 << 63) - time.time_ns():016x}{uuid.uuid4().hex[:4]}"


def check_lite_path(uri: str) -> None:
    """Milvus Lite's own rules for its file, as one clear error before it starts."""
    if "://" in uri:
        return
    p = Path(uri)
    if not _LITE_NAME.match(p.name):
        raise ConfigError(f"Milvus Lite file name '{p.name}' ({uri}) may hold only letters, digits, "
                          "'.', '-' and '_'; rename it (e.g. '{}')".format(
                              re.sub(r"[^a-zA-Z0-9.\-_]", "_", p.name)))
    if len(p.name) > 36:
        raise ConfigError(f"Milvus Lite file name '{p.name}' is {len(p.name)} characters; it "
                          "must be at most 36: choose a shorter --path")
    if not p.parent.is_dir():
        raise ConfigError(f"folder '{p.parent}' of the Milvus Lite file {uri} does not exist; "
                          "create it or choose another --path")


def _milvus_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        from grpc import RpcError
        from pymilvus.exceptions import MilvusException, MilvusUnavailableException
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, (RpcError, MilvusUnavailableException)):
        return True
    if isinstance(exc, MilvusException):
        msg = str(exc)
        return any(s in msg for s in ("UNAVAILABLE", "failed to connect", "Connection refused",
                                      "DEADLINE_EXCEEDED", "Retry run out", "Fail connecting"))
    return False


def _stored_payload(payload: dict) -> dict:
    """The user's fields and their type tags (see connectors.filters.TYPES_KEY)."""
    out = {k: v for k, v in payload.items() if not k.startswith(filters.RESERVED_PREFIX)}
    out[filters.TYPES_KEY] = filters.type_tags(out)
    out.update(filters.date_twins(out))
    return out


def _user_payload(payload: dict | None) -> dict:
    return {k: v for k, v in (payload or {}).items() if not k.startswith(filters.RESERVED_PREFIX)}


def rescore_rows(full: tuple[np.ndarray, np.ndarray], rels: list[dict]) -> np.ndarray:
    """Dot products float32 [n] of one query (indices, values) with stored sparse rows
    ({index: value} as Milvus returns them), accumulated in float32 as the engine does."""
    qi = np.asarray(full[0], np.int64)
    qv = np.asarray(full[1], np.float32)
    lens = np.fromiter((len(r) for r in rels), np.int64, len(rels))
    idx = np.fromiter((i for r in rels for i in r.keys()), np.int64, int(lens.sum()))
    val = np.fromiter((v for r in rels for v in r.values()), np.float32, int(lens.sum()))
    order = np.argsort(qi)
    qi, qv = qi[order], qv[order]
    pos = np.searchsorted(qi, idx)
    pos[pos == len(qi)] = 0
    w = np.where(qi[pos] == idx, qv[pos], np.float32(0)) if len(qi) else np.zeros_like(val)
    prod = (w * val).astype(np.float32)
    ptr = np.concatenate([[0], np.cumsum(lens)])
    out = np.add.reduceat(prod, ptr[:-1]) if len(prod) else np.zeros(len(rels), np.float32)
    out[lens == 0] = 0
    return out.astype(np.float32)


class MilvusStore(VectorStore):
    backend = "milvus"

    storage_version = STORAGE_VERSION

    def __init__(self, name: str = "asif", *, uri: str = "asif.db", token: str | None = None,
                 timeout: float = 30.0, connect_timeout: float = 10.0,
                 retry_budget: float = 60.0, inverted_index_algo: str | None = None,
                 drop_ratio_search: float = 0.0, cluster=None) -> None:
        """timeout: seconds one request may take; connect_timeout: to reach the server;
        retry_budget: seconds of retries of one operation before it fails.
        inverted_index_algo: the sparse index's algorithm when the index is created
        (DAAT_MAXSCORE, DAAT_WAND or TAAT_NAIVE; None: Milvus' default);
        drop_ratio_search: share of the smallest query entries Milvus ignores (0: exact).
        cluster: :class:`connectors.cluster.ClusterOptions` (its shard number becomes the
        items collection's ``num_shards``)."""
        pm = require("pymilvus", "the Milvus connector")
        self._pm = pm
        self.name = check_index_name(name, self.backend)
        from connectors.cluster import ClusterOptions

        self.cluster = cluster or ClusterOptions()
        self.where = uri
        self.inverted_index_algo = inverted_index_algo
        self.drop_ratio_search = float(drop_ratio_search)
        # pymilvus bounds its own internal retry loop by `timeout` only when it is an int
        # (a float means 75 tries: minutes against a dead server).
        self.timeout = max(1, math.ceil(timeout))
        self.retry_budget = retry_budget
        check_lite_path(uri)
        kw = {"uri": uri, "timeout": max(1, math.ceil(connect_timeout))}
        if token:
            kw["token"] = token
        try:
            self.client = self._call("connect", pm.MilvusClient, **kw)
        except (BackendError, RuntimeError, pm.exceptions.MilvusException) as exc:
            cause = exc.__cause__ or exc
            text = f"{cause} {getattr(cause, 'message', '')}"
            if "://" not in uri and "Open local milvus failed" in text:
                raise BackendUnavailableError(
                    f"Milvus Lite file {uri} is open in another process (Milvus Lite allows one "
                    "process per file); stop that process, or serve the file with "
                    "'milvus-lite server' and connect every process with --url") from exc
            raise
        self._man: AnchorManifest | None = None  # dims, read once

    def _call(self, what: str, fn, *args, **kwargs):
        if getattr(fn, "__self__", None) is getattr(self, "client", None):
            kwargs.setdefault("timeout", self.timeout)
            kwargs.setdefault("retry_times", 2)  # with_retries owns the backoff
        return with_retries(fn, _milvus_transient, f"Milvus {what} on {self.where}",
                            (self._pm.exceptions.MilvusException,),
                            budget=self.retry_budget)(*args, **kwargs)

    def _has(self, c: str) -> bool:
        return bool(self._call("has_collection", self.client.has_collection, c))

    def exists(self) -> bool:
        return self._has(self.meta)

    def create(self, manifest: AnchorManifest, recreate: bool = False) -> None:
        DT = self._pm.DataType
        if self.exists():
            if not recreate:
                raise CollectionError(
                    f"index '{self.name}' already exists in Milvus at {self.where}; open it, or "
                    "pass recreate=True (--recreate) to replace it"
                )
            self.drop()
        cs = self._pm.MilvusClient.create_schema
        meta = cs(auto_id=False, enable_dynamic_field=False)
        meta.add_field("key", DT.VARCHAR, is_primary=True, max_length=256)
        meta.add_field("doc", DT.VARCHAR, max_length=65535)
        meta.add_field("v", DT.FLOAT_VECTOR, dim=2)
        self._create(self.meta, meta, [("v", "FLAT", "IP")])
        anc = cs(auto_id=False, enable_dynamic_field=False)
        anc.add_field("id", DT.INT64, is_primary=True)
        anc.add_field("image", DT.FLOAT_VECTOR, dim=manifest.image_dim)
        anc.add_field("text", DT.FLOAT_VECTOR, dim=manifest.text_dim)
        anc.add_field("caption", DT.VARCHAR, max_length=4096)
        anc.add_field("image_ref", DT.VARCHAR, max_length=2048)
        anc.add_field("source", DT.VARCHAR, max_length=256)
        anc.add_field("added_at", DT.DOUBLE)
        anc.add_field("key", DT.VARCHAR, max_length=64)
        anc.add_field("added_version", DT.INT64)
        anc.add_field("removed_version", DT.INT64)
        self._create(self.anchors, anc, [("image", "FLAT", "COSINE"), ("text", "FLAT", "COSINE")])
        it = cs(auto_id=False, enable_dynamic_field=False)
        # pk is physical (point id + a write nonce); id is the logical point id. See
        # upsert_items for why a rewrite never reuses a primary key.
        it.add_field("pk", DT.VARCHAR, is_primary=True, max_length=80)
        it.add_field("id", DT.VARCHAR, max_length=64)
        it.add_field("item", DT.VARCHAR, max_length=64)
        it.add_field("rel", DT.SPARSE_FLOAT_VECTOR)
        two = bool(two_stage_keep(manifest))
        if two:  # the first stage's vectors (two-stage search)
            it.add_field("cand", DT.SPARSE_FLOAT_VECTOR)
        # A row has one dense field, and the two modalities' dims differ: the raw embedding
        # is zero-padded to the larger dim (the manifest says how much of it is real).
        it.add_field("emb", DT.FLOAT_VECTOR, dim=max(manifest.image_dim, manifest.text_dim))
        it.add_field("modality", DT.VARCHAR, max_length=16)
        it.add_field("kth", DT.FLOAT)
        it.add_field("vfrom", DT.INT64)
        it.add_field("vto", DT.INT64)
        it.add_field("payload", DT.JSON)
        algo = {"inverted_index_algo": self.inverted_index_algo} if self.inverted_index_algo \
            else {}
        self._create(self.items, it, [("rel", "SPARSE_INVERTED_INDEX", "IP"), ("emb", "FLAT", "IP"),
                                      *([("cand", "SPARSE_INVERTED_INDEX", "IP")] if two else [])],
                     {"rel": algo, "cand": algo}, **self.cluster.milvus())
        manifest.extra["type_tags"] = True  # every payload carries filters.TYPES_KEY
        self.write_manifest(manifest)

    def _create(self, name, schema, indexes, params: dict | None = None, **spread) -> None:
        ip = self.client.prepare_index_params()
        for field, kind, metric in indexes:
            ip.add_index(field, index_type=kind, metric_type=metric,
                         params=(params or {}).get(field, {}))
        # Strong: a read sees every write acknowledged before it (the leases and the version
        # checks of connectors.versioning rely on it).
        self._call("create_collection", self.client.create_collection, name, schema=schema,
                   index_params=ip, consistency_level="Strong", **spread)

    def collection_names(self) -> list[str]:
        return sorted(self._call("list", self.client.list_collections))

    def drop(self) -> None:
        for c in (self.items, self.anchors, self.meta):
            if self._has(c):
                self._call("drop", self.client.drop_collection, c)
        self._man = None

    def get_doc(self, key: str) -> dict | None:
        rows = self._call("get", self.client.get, self.meta, ids=[key], output_fields=["doc"])
        return json.loads(rows[0]["doc"]) if rows else None

    def put_doc(self, key: str, doc: dict | None) -> None:
        if doc is None:
            self._call("delete", self.client.delete, self.meta, ids=[key])
            return
        if key == "manifest":
            self._man = None  # re-read (and checked) on next use
        self._call("upsert", self.client.upsert, self.meta,
                   [{"key": key, "doc": json.dumps(doc), "v": [1.0, 0.0]}])

    def list_docs(self, kind: str) -> dict[str, dict]:
        rows = self._call("query", self.client.query, self.meta,
                          filter=f'key like "{kind}:%"', output_fields=["key", "doc"])
        return {r["key"]: json.loads(r["doc"]) for r in rows}

    # anchors ------------------------------------------------------------------------
    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None:
        rows = [{"id": int(a.id), "image": a.image.tolist(), "text": a.text.tolist(),
                 "caption": a.caption, "image_ref": a.image_ref, "source": a.source,
                 "added_at": float(a.added_at), "key": a.key,
                 "added_version": int(a.added_version), "removed_version": int(a.removed_version)}
                for a in anchors]
        for s in range(0, len(rows), _MAX_RPC_ITEMS):
            self._call("upsert anchors", self.client.upsert, self.anchors, rows[s:s + _MAX_RPC_ITEMS])

    def delete_anchors(self, ids: list[int]) -> None:
        self._call("delete anchors", self.client.delete, self.anchors, ids=[int(i) for i in ids])

    def fetch_anchors(self, version: int | None = None) -> list[AnchorRecord]:
        flt = "" if version is None else f"added_version <= {version} and removed_version > {version}"
        if not self._nonempty(self.anchors):
            return []
        it = self._call("query", self.client.query_iterator, self.anchors, batch_size=1000,
                        filter=flt, output_fields=["*"])
        out = []
        while True:
            rows = self._call("query anchors", it.next)
            if not rows:
                it.close()
                break
            out.extend(AnchorRecord(int(r["id"]), np.asarray(r["image"], np.float32),
                                    np.asarray(r["text"], np.float32), r["caption"], r["image_ref"],
                                    r["source"], float(r["added_at"]), r["key"],
                                    int(r["added_version"]), int(r["removed_version"]))
                       for r in rows)
        out.sort(key=lambda a: a.id)
        return out

    # items -----------------------------------------------------------------------------
    def _manifest_cached(self) -> AnchorManifest:
        if self._man is None:
            self._man = self.read_manifest()
            if self._man is None:
                raise CollectionError(f"index '{self.name}' does not exist in Milvus at {self.where}")
        return self._man

    def _row(self, it: ItemRecord, d: int, nonce: str) -> dict:
        emb = np.zeros(d, np.float32)
        emb[: it.embedding.shape[0]] = it.embedding
        idx, val = with_fold(it.sparse_indices, it.sparse_values, it.fold)
        payload = _stored_payload(it.payload)
        if it.fold is not None:  # also in the vector (FOLD_DIM); here so that hits carry it
            payload["asif_fold"] = float(it.fold)
        row = {"pk": f"{it.id}.{nonce}", "id": it.id, "item": it.item,
               "rel": {int(i): float(v) for i, v in zip(idx, val)},
               "emb": emb.tolist(), "modality": it.modality, "kth": float(it.kth_similarity),
               "vfrom": int(it.valid_from), "vto": int(it.valid_to), "payload": payload}
        keep = two_stage_keep(self._manifest_cached())
        if keep:
            ci, cv = candidate_entries(it.sparse_indices, it.sparse_values, keep)
            row["cand"] = {int(i): float(v) for i, v in zip(ci, cv)}
        return row

    def upsert_items(self, items: list[ItemRecord]) -> None:
        """Write points; a point already stored is replaced.

        Milvus applies an upsert as delete + insert, and a search running between the two
        misses the row. So a rewrite inserts the new row under a fresh primary key first and
        then deletes the point's older rows: a concurrent search sees the old row, both (the
        search de-duplicates), or the new one; never neither."""
        if not items:
            return
        items = list({it.id: it for it in items}.values())
        man = self._manifest_cached()
        d = max(man.image_dim, man.text_dim)
        nonce = _descending_nonce()
        for s in range(0, len(items), _MAX_RPC_ITEMS):
            chunk = items[s:s + _MAX_RPC_ITEMS]
            ids = json.dumps([it.id for it in chunk])
            # The rows to replace are listed before the insert and deleted by primary key
            # after it. (A delete by `id in [...] and pk not in [...]` also removed the new
            # rows once milvus-lite 2.5.1 had sealed a segment: 59% of 10^5 rows lost.)
            old = self._call("query", self.client.query, self.items, filter=f"id in {ids}",
                             output_fields=["pk"])
            rows = [self._row(it, d, nonce) for it in chunk]
            self._call("insert items", self.client.insert, self.items, rows)
            # The old rows go only once the new ones are read back: milvus-lite on a full
            # disk acknowledges inserts it drops, and deleting then would lose the item.
            pks = [r["pk"] for r in rows]

            def missing(pks=pks) -> list:
                kept = {r["pk"] for r in self._call("query", self.client.query, self.items,
                                                     filter=f"pk in {json.dumps(pks)}",
                                                     output_fields=["pk"])}
                return sorted(set(pks) - kept)

            self._read_back("writing items", len(pks), missing)
            if old:
                self._call("delete replaced items", self.client.delete, self.items,
                           ids=[r["pk"] for r in old])

    def _record(self, r) -> ItemRecord:
        man = self._manifest_cached()
        dim = man.image_dim if r["modality"] == "image" else man.text_dim
        rel = r["rel"]
        idx = np.fromiter(rel.keys(), np.int64, len(rel))
        val = np.fromiter(rel.values(), np.float32, len(rel))
        idx, val, fold = split_fold(idx, val)
        order = np.argsort(idx)
        return ItemRecord(r["id"], r["item"], r["modality"], idx[order], val[order],
                          np.asarray(r["emb"][:dim], np.float32), float(r["kth"]),
                          int(r["vfrom"]), int(r["vto"]), _user_payload(r["payload"]), fold)

    _FIELDS = ["pk", "id", "item", "rel", "emb", "modality", "kth", "vfrom", "vto", "payload"]

    def _records(self, rows) -> list[ItemRecord]:
        """Rows -> records, one per logical point (a rewrite in flight shows two rows)."""
        out: dict[str, ItemRecord] = {}
        for r in rows:
            out[r["id"]] = self._record(r)
        return list(out.values())

    def _by_filter(self, expr: str) -> list[ItemRecord]:
        # Scalar fields first, then whole rows by primary key: a query that outputs vector
        # fields trips milvus-lite 2.5.1's empty-segment assertion (see _nonempty).
        rows = self._call("query", self.client.query, self.items, filter=expr,
                          output_fields=["pk"])
        if not rows:
            return []
        full = self._call("get", self.client.get, self.items, ids=[r["pk"] for r in rows],
                          output_fields=self._FIELDS)
        return self._records(full)

    def fetch_items(self, ids: list[str]) -> list[ItemRecord]:
        if not ids:
            return []
        return self._by_filter(f"id in {json.dumps(list(ids))}")

    def heads(self, items: list[str]) -> dict[str, ItemRecord]:
        if not items:
            return {}
        return {r.item: r for r in self._by_filter(
            f"item in {json.dumps(list(items))} and vto >= {FOREVER}")}

    def points_at(self, items: list[str], version: int) -> dict[str, ItemRecord]:
        if not items:
            return {}
        return {r.item: r for r in self._by_filter(
            f"item in {json.dumps(list(items))} and {self._expr(None, version)}")}

    def set_valid_to(self, point_ids: list[str], version: int) -> None:
        # Milvus 2.5 has no partial update: rewrite the (few, affected) rows whole, through
        # upsert_items so that readers at older versions never miss them.
        recs = self.fetch_items(point_ids)
        for r in recs:
            r.valid_to = version
        self.upsert_items(recs)

    def stored_validity(self, point_ids: list[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[str, int, int]] = {}
        for s in range(0, len(point_ids), _MAX_RPC_ITEMS):
            ids = json.dumps(list(point_ids[s:s + _MAX_RPC_ITEMS]))
            for r in self._call("query", self.client.query, self.items, filter=f"id in {ids}",
                                output_fields=["pk", "id", "vfrom", "vto"]):
                # a rewrite in flight shows two rows: the newer (smaller nonce) one counts
                if r["id"] not in out or r["pk"] < out[r["id"]][0]:
                    out[r["id"]] = (r["pk"], int(r["vfrom"]), int(r["vto"]))
        return {k: (v[1], v[2]) for k, v in out.items()}

    def stored_anchor_versions(self, ids: list[int]) -> dict[int, tuple[int, int]]:
        out = {}
        for s in range(0, len(ids), _MAX_RPC_ITEMS):
            part = [int(i) for i in ids[s:s + _MAX_RPC_ITEMS]]
            for r in self._call("query", self.client.query, self.anchors,
                                filter=f"id in {json.dumps(part)}",
                                output_fields=["id", "added_version", "removed_version"]):
                out[int(r["id"])] = (int(r["added_version"]), int(r["removed_version"]))
        return out

    def delete_items(self, ids: list[str]) -> None:
        if ids:
            self._call("delete items", self.client.delete, self.items,
                       filter=f"id in {json.dumps(list(ids))}")

    def delete_expired(self, version: int, anchor_version: int | None = None) -> int:
        av = version if anchor_version is None else anchor_version
        n = self.count_items_expr(f"vto <= {version}")
        self._call("delete", self.client.delete, self.items, filter=f"vto <= {version}")
        self._call("delete", self.client.delete, self.anchors, filter=f"removed_version <= {av}")
        return n

    def _expr(self, flt: Filter | None, version: int | None) -> str:
        """The user's filter (validated, rendered with escaped literals) in parentheses, and
        the version fence beside it: no filter can reach around the fence."""
        user = filters.to_milvus(filters.parse(flt))
        if filters.TYPES_KEY in user and not self._manifest_cached().extra.get("type_tags"):
            raise filters.FilterError(
                f"filter: 'exists' and negated ranges need payload type tags, which "
                f"{self.location} predates; rebuild it into a new "
                "index ('asif-index anchors rebuild') or drop that part of the filter")
        parts = [f"({user})"] if user else []
        if version is not None:
            parts.append(f"(vfrom <= {int(version)} and vto > {int(version)})")
        return " and ".join(parts)

    def _nonempty(self, coll: str) -> bool:
        # milvus-lite 2.5.1's query iterator trips a segcore assertion ("Growing segment loss
        # raw data") on an empty collection: ask for a count first.
        rows = self._call("count", self.client.query, coll, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) > 0

    def count_items_expr(self, expr: str) -> int:
        rows = self._call("count", self.client.query, self.items, filter=expr,
                          output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def count_items(self, flt: Filter | None = None, version: int | None = None) -> int:
        return self.count_items_expr(self._expr(flt, version))

    def search(self, indices, values, limit, flt=None, version=None) -> list[Hit]:
        q = {int(i): float(v) for i, v in zip(indices, values) if v > 0}
        if not q:
            return []
        # Twice the limit: a point being rewritten can show as two rows (see upsert_items).
        res = self._call("search", self.client.search, self.items, data=[q], anns_field="rel",
                         limit=min(2 * limit, 16384), filter=self._expr(flt, version),
                         output_fields=["item", "modality", "payload"],
                         search_params={"metric_type": "IP",
                                        "params": {"drop_ratio_search": self.drop_ratio_search}})
        out: dict[str, Hit] = {}
        for h in res[0]:
            e = h["entity"]
            if e["item"] not in out:
                fold = (e["payload"] or {}).get("asif_fold")
                out[e["item"]] = Hit(e["item"], float(h["distance"]), e["modality"],
                                     _user_payload(e["payload"]),
                                     fold=None if fold is None else float(fold))
        return sorted(out.values(), key=lambda x: -x.score)[:limit]

    _RANGE_LIMIT = 16384  # Milvus' top-k ceiling: a full page means "maybe more", so scan

    def points_near(self, modality, queries, threshold, kth_range, version):
        if not len(queries):
            return set()
        man = self._manifest_cached()
        d = max(man.image_dim, man.text_dim)
        lo, hi = kth_range
        parts = [f'modality == "{modality}"', self._expr(None, version)]
        if np.isfinite(lo):
            parts.append(f"kth >= {float(lo)!r}")
        if np.isfinite(hi):
            parts.append(f"kth < {float(hi)!r}")
        if not self.count_items_expr(" and ".join(parts)):
            return set()
        padded = np.zeros((len(queries), d), np.float32)
        padded[:, :queries.shape[1]] = queries
        out: set[str] = set()
        for s in range(0, len(padded), 16):
            # a range search on the FLAT (exact) index: every row above the radius
            res = self._call("search", self.client.search, self.items,
                             data=padded[s:s + 16].tolist(), anns_field="emb",
                             limit=self._RANGE_LIMIT, filter=" and ".join(parts),
                             output_fields=["id"],
                             search_params={"metric_type": "IP",
                                            "params": {"radius": float(threshold),
                                                       "range_filter": 1e9}})
            for hits in res:
                if len(hits) >= self._RANGE_LIMIT:
                    raise NotImplementedError("more points than one range search returns")
                out.update(h["entity"]["id"] for h in hits)
        return out

    def points_holding(self, anchor_ids, version):
        out: set[str] = set()
        for a in anchor_ids:
            res = self._call("search", self.client.search, self.items, data=[{int(a): 1.0}],
                             anns_field="rel", limit=self._RANGE_LIMIT,
                             filter=self._expr(None, version), output_fields=["id"],
                             search_params={"metric_type": "IP", "params": {}})
            if len(res[0]) >= self._RANGE_LIMIT:
                raise NotImplementedError("more holders than one search returns")
            out.update(h["entity"]["id"] for h in res[0])
        return out

    def search_two_stage(self, full, cand, candidates, limit, flt=None, version=None):
        # Milvus has no rescoring stage (its hybrid search fuses ranks): the candidates come
        # back with their full vectors and are rescored here, exactly as the engine would
        if not two_stage_keep(self._manifest_cached()):
            raise NotImplementedError("this index has no candidate vectors")
        qc = {int(i): float(v) for i, v in zip(*cand) if v > 0}
        if not qc:
            return []
        res = self._call("search", self.client.search, self.items, data=[qc], anns_field="cand",
                         limit=min(int(candidates), 16384), filter=self._expr(flt, version),
                         output_fields=["item", "modality", "payload", "rel"],
                         search_params={"metric_type": "IP",
                                        "params": {"drop_ratio_search": self.drop_ratio_search}})
        rows = {}
        for h in res[0]:  # a point being rewritten shows as two rows: the same vector
            rows.setdefault(h["entity"]["item"], h["entity"])
        if not rows:
            return []
        scores = rescore_rows(full, [e["rel"] for e in rows.values()])
        out = []
        for (item, e), sc in zip(rows.items(), scores):
            if sc > 0:
                fold = (e["payload"] or {}).get("asif_fold")
                out.append(Hit(item, float(sc), e["modality"], _user_payload(e["payload"]),
                               fold=None if fold is None else float(fold)))
        out.sort(key=lambda x: (-x.score, x.id))
        return out[:limit]

    def scroll_items(self, batch: int = 256, version: int | None = None,
                     id_range=None) -> Iterator[list[ItemRecord]]:
        if not self._nonempty(self.items):
            return
        expr = self._expr(None, version)
        if id_range:
            lo, hi = id_range
            parts = [expr] if expr else []
            parts += [f'id >= "{lo}"'] if lo else []
            parts += [f'id < "{hi}"'] if hi else []
            expr = " and ".join(parts)
        it = self._call("query", self.client.query_iterator, self.items, batch_size=batch,
                        filter=expr, output_fields=self._FIELDS)
        while True:
            rows = self._call("scroll", it.next)
            if not rows:
                it.close()
                return
            yield self._records(rows)

    def close(self) -> None:
        self.client.close()
