"""The exact in-memory store: the reference the database connectors are checked against."""

from __future__ import annotations

import copy
from typing import Iterator

import numpy as np

from asif_index.anchors import AnchorManifest
from asif_index.errors import CollectionError
from connectors.base import (
    FOREVER,
    AnchorRecord,
    Filter,
    Hit,
    ItemRecord,
    VectorStore,
    filter_matches,
)


class MemoryStore(VectorStore):
    backend = "memory"

    def __init__(self, name: str = "asif") -> None:
        self.name = name
        self._docs: dict[str, dict] = {}
        self._anchors: dict[int, AnchorRecord] = {}
        self._items: dict[str, ItemRecord] = {}
        self._created = False

    def create(self, manifest: AnchorManifest, recreate: bool = False) -> None:
        if self._created and not recreate:
            raise CollectionError(f"index '{self.name}' exists; pass recreate=True to replace it")
        self.__init__(self.name)
        self._created = True
        self.write_manifest(manifest)

    def exists(self) -> bool:
        return self._created

    def drop(self) -> None:
        self.__init__(self.name)

    def get_doc(self, key: str) -> dict | None:
        return copy.deepcopy(self._docs.get(key))

    def put_doc(self, key: str, doc: dict | None) -> None:
        if doc is None:
            self._docs.pop(key, None)
        else:
            self._docs[key] = copy.deepcopy(doc)

    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None:
        for a in anchors:
            self._anchors[int(a.id)] = copy.copy(a)

    def delete_anchors(self, ids: list[int]) -> None:
        for i in ids:
            self._anchors.pop(int(i), None)

    def fetch_anchors(self, version: int | None = None) -> list[AnchorRecord]:
        return [copy.copy(self._anchors[i]) for i in sorted(self._anchors)
                if self._anchors[i].visible(version)]

    def upsert_items(self, items: list[ItemRecord]) -> None:
        for it in items:
            self._items[it.id] = copy.copy(it)

    def fetch_items(self, ids: list[str]) -> list[ItemRecord]:
        return [copy.copy(self._items[i]) for i in ids if i in self._items]

    def heads(self, items: list[str]) -> dict[str, ItemRecord]:
        want = set(items)
        return {r.item: copy.copy(r) for r in self._items.values()
                if r.item in want and r.valid_to == FOREVER}

    def set_valid_to(self, point_ids: list[str], version: int) -> None:
        for i in point_ids:
            if i in self._items:
                self._items[i].valid_to = version

    def delete_items(self, ids: list[str]) -> None:
        for i in ids:
            self._items.pop(i, None)

    def delete_expired(self, version: int) -> int:
        gone = [k for k, r in self._items.items() if r.valid_to <= version]
        for k in gone:
            del self._items[k]
        for k in [k for k, a in self._anchors.items() if a.removed_version <= version]:
            del self._anchors[k]
        return len(gone)

    def count_items(self, flt: Filter | None = None, version: int | None = None) -> int:
        return sum(filter_matches(it.payload, it.modality, flt) and it.visible(version)
                   for it in self._items.values())

    def search(self, indices, values, limit, flt=None, version=None) -> list[Hit]:
        q = dict(zip(np.asarray(indices).tolist(), np.asarray(values, np.float64).tolist()))
        scored = []
        for it in self._items.values():
            if not it.visible(version) or not filter_matches(it.payload, it.modality, flt):
                continue
            s = sum(q.get(i, 0.0) * v for i, v in zip(it.sparse_indices.tolist(),
                                                      it.sparse_values.tolist()))
            if s > 0:
                scored.append((-s, it.item, it))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [Hit(it.item, -ns, it.modality, it.payload) for ns, _, it in scored[:limit]]

    def scroll_items(self, batch: int = 256, version: int | None = None) -> Iterator[list[ItemRecord]]:
        items = [copy.copy(self._items[k]) for k in sorted(self._items)
                 if self._items[k].visible(version)]
        for s in range(0, len(items), batch):
            yield items[s : s + batch]
