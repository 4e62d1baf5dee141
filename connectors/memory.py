"""The exact in-memory store: the reference the database connectors are checked against."""

from __future__ import annotations

import copy
import functools
import threading
from typing import Iterator

import numpy as np

from asif_index.anchors import AnchorManifest
from asif_index.errors import CollectionError
from asif_index.methods.qbnorm_fold import FOLD_DIM, split_fold
from connectors.base import (
    check_index_name,
    FOREVER,
    AnchorRecord,
    Filter,
    Hit,
    ItemRecord,
    VectorStore,
    candidate_entries,
    filter_matches,
    two_stage_keep,
    in_range,
)


def _locked(fn):
    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        with self._lock:
            return fn(self, *args, **kwargs)

    return call


class MemoryStore(VectorStore):
    """Threads may share it: every operation holds one lock (scrolls work on a snapshot)."""

    backend = "memory"
    _lock = threading.RLock()  # class-wide: instances are cheap and rarely contended

    def __init__(self, name: str = "asif") -> None:
        self.name = check_index_name(name, self.backend)
        self._docs: dict[str, dict] = {}
        self._anchors: dict[int, AnchorRecord] = {}
        self._items: dict[str, ItemRecord] = {}
        self._created = False
        self._gen = 0  # bumped by every item mutation; invalidates the search cache
        self._cache: dict = {}

    @_locked
    def create(self, manifest: AnchorManifest, recreate: bool = False) -> None:
        if self._created and not recreate:
            raise CollectionError(f"index '{self.name}' exists; pass recreate=True to replace it")
        self.__init__(self.name)
        self._created = True
        self.write_manifest(manifest)

    @_locked
    def exists(self) -> bool:
        return self._created

    @_locked
    def drop(self) -> None:
        self.__init__(self.name)

    @_locked
    def get_doc(self, key: str) -> dict | None:
        return copy.deepcopy(self._docs.get(key))

    @_locked
    def put_doc(self, key: str, doc: dict | None) -> None:
        if doc is None:
            self._docs.pop(key, None)
        else:
            self._docs[key] = copy.deepcopy(doc)

    @_locked
    def list_docs(self, kind: str) -> dict[str, dict]:
        return {k: copy.deepcopy(d) for k, d in list(self._docs.items())
                if k.startswith(kind + ":")}

    @_locked
    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None:
        for a in anchors:
            self._anchors[int(a.id)] = copy.copy(a)

    @_locked
    def delete_anchors(self, ids: list[int]) -> None:
        for i in ids:
            self._anchors.pop(int(i), None)

    @_locked
    def fetch_anchors(self, version: int | None = None) -> list[AnchorRecord]:
        return [copy.copy(self._anchors[i]) for i in sorted(self._anchors)
                if self._anchors[i].visible(version)]

    @_locked
    def upsert_items(self, items: list[ItemRecord]) -> None:
        self._gen += 1
        for it in items:
            self._items[it.id] = copy.copy(it)

    @_locked
    def fetch_items(self, ids: list[str]) -> list[ItemRecord]:
        return [copy.copy(self._items[i]) for i in ids if i in self._items]

    @_locked
    def points_at(self, items: list[str], version: int) -> dict[str, ItemRecord]:
        want = set(items)
        return {r.item: r for r in self._items.values() if r.item in want and r.visible(version)}

    @_locked
    def heads(self, items: list[str]) -> dict[str, ItemRecord]:
        want = set(items)
        return {r.item: copy.copy(r) for r in self._items.values()
                if r.item in want and r.valid_to == FOREVER}

    @_locked
    def set_valid_to(self, point_ids: list[str], version: int) -> None:
        self._gen += 1
        for i in point_ids:
            if i in self._items:  # replace, never mutate: records may be shared by snapshots
                r = copy.copy(self._items[i])
                r.valid_to = version
                self._items[i] = r

    @_locked
    def delete_items(self, ids: list[str]) -> None:
        self._gen += 1
        for i in ids:
            self._items.pop(i, None)

    @_locked
    def delete_expired(self, version: int, anchor_version: int | None = None) -> int:
        av = version if anchor_version is None else anchor_version
        self._gen += 1
        gone = [k for k, r in self._items.items() if r.valid_to <= version]
        for k in gone:
            del self._items[k]
        for k in [k for k, a in self._anchors.items() if a.removed_version <= av]:
            del self._anchors[k]
        return len(gone)

    @_locked
    def count_items(self, flt: Filter | None = None, version: int | None = None) -> int:
        from connectors import filters

        flt = filters.parse(flt)
        return sum(filter_matches(it.payload, it.modality, flt) and it.visible(version)
                   for it in self._items.values())

    def _matrix(self):
        """(records, CSR [n_points, max id + 1] of their vectors), rebuilt after mutations."""
        import scipy.sparse as sp

        if self._cache.get("gen") != self._gen:
            recs = list(self._items.values())
            lens = np.array([len(r.sparse_indices) for r in recs], np.int64)
            indptr = np.concatenate([[0], np.cumsum(lens)])
            idx = np.concatenate([r.sparse_indices for r in recs]) if recs else np.zeros(0, np.int64)
            val = (np.concatenate([r.sparse_values for r in recs]) if recs
                   else np.zeros(0, np.float32)).astype(np.float64)
            ncol = int(idx.max()) + 1 if idx.size else 1
            # the folded QB-Norm entry (FOLD_DIM) is a column of its own, not column 4e9
            folds = np.array([r.fold or 0.0 for r in recs], np.float64)
            self._cache = {"gen": self._gen, "recs": recs, "masks": {}, "folds": folds,
                           "csr": sp.csr_matrix((val, idx, indptr), shape=(len(recs), ncol))}
            keep = two_stage_keep(self.read_manifest())
            if keep:
                cand = [candidate_entries(r.sparse_indices, r.sparse_values, keep) for r in recs]
                cl = np.array([len(c[0]) for c in cand], np.int64)
                self._cache["cand"] = sp.csr_matrix(
                    (np.concatenate([c[1] for c in cand]).astype(np.float64),
                     np.concatenate([c[0] for c in cand]),
                     np.concatenate([[0], np.cumsum(cl)])), shape=(len(recs), ncol))
        return self._cache

    @staticmethod
    def _dense(indices, values, ncol: int) -> tuple[np.ndarray, float]:
        """A query as a dense column (anchor entries) and its folded-QB-Norm weight."""
        ind, w = split_fold(np.asarray(indices, np.int64), np.asarray(values, np.float64))[:2]
        fold_w = float(np.asarray(values, np.float64)[np.asarray(indices) == FOLD_DIM].sum())
        q = np.zeros(ncol)
        ok = ind < ncol
        q[ind[ok]] = w[ok]
        return q, fold_w

    @_locked
    def search_two_stage(self, full, cand, candidates, limit, flt=None, version=None):
        cache = self._matrix()
        recs, m = cache["recs"], cache["csr"]
        if not recs:
            return []
        if "cand" not in cache:
            raise NotImplementedError("this index has no candidate vectors")
        qc, fw = self._dense(*cand, m.shape[1])
        first = cache["cand"] @ qc + fw * cache["folds"]
        ok = np.flatnonzero(self._mask(cache, flt, version) & (first > 0))
        picked = sorted(ok.tolist(), key=lambda j: (-first[j], recs[j].item))[:candidates]
        q, fold_w = self._dense(*full, m.shape[1])
        exact = m[picked] @ q + fold_w * cache["folds"][picked]
        order = sorted(range(len(picked)), key=lambda t: (-exact[t], recs[picked[t]].item))
        return [Hit(recs[picked[t]].item, float(exact[t]), recs[picked[t]].modality,
                    recs[picked[t]].payload, fold=recs[picked[t]].fold)
                for t in order if exact[t] > 0][:limit]

    def _mask(self, cache, flt: Filter | None, version: int | None) -> np.ndarray:
        from connectors import filters

        flt = filters.parse(flt)
        key = (version, filters.key(flt))
        if key not in cache["masks"]:
            cache["masks"][key] = np.array(
                [r.visible(version) and filter_matches(r.payload, r.modality, flt)
                 for r in cache["recs"]], bool)
        return cache["masks"][key]

    @_locked
    def search(self, indices, values, limit, flt=None, version=None) -> list[Hit]:
        cache = self._matrix()
        recs, m = cache["recs"], cache["csr"]
        if not recs:
            return []
        q, fold_w = self._dense(indices, values, m.shape[1])
        scores = m @ q
        if fold_w:
            scores = scores + fold_w * cache["folds"]
        cand = np.flatnonzero(self._mask(cache, flt, version) & (scores > 0))
        # descending score, ties by ascending item id (deterministic reference order)
        order = sorted(cand.tolist(), key=lambda j: (-scores[j], recs[j].item))[:limit]
        return [Hit(recs[j].item, float(scores[j]), recs[j].modality, recs[j].payload,
                    fold=recs[j].fold)
                for j in order]

    @_locked
    def points_near(self, modality, queries, threshold, kth_range, version):
        lo, hi = kth_range
        recs = [r for r in self._items.values() if r.modality == modality and r.visible(version)
                and lo <= r.kth_similarity < hi]
        if not recs or not len(queries):
            return set()
        emb = np.stack([r.embedding for r in recs]).astype(np.float32)
        best = (emb @ np.asarray(queries, np.float32).T).max(axis=1)
        return {r.id for r, b in zip(recs, best) if b > threshold}

    @_locked
    def points_holding(self, anchor_ids, version):
        want = np.asarray(list(anchor_ids), np.int64)
        return {r.id for r in self._items.values() if r.visible(version)
                and np.isin(r.sparse_indices, want).any()}

    def scroll_items(self, batch: int = 256, version: int | None = None,
                     id_range=None) -> Iterator[list[ItemRecord]]:
        # No copies: stored records are never mutated in place (set_valid_to replaces them).
        with self._lock:
            items = [r for r in self._items.values()
                     if r.visible(version) and in_range(r.id, id_range)]
        for s in range(0, len(items), batch):
            yield items[s : s + batch]
