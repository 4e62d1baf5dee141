"""The exact in-memory store: the reference the database connectors are checked against."""

from __future__ import annotations

import copy
from typing import Iterator

import numpy as np

from asif_index.anchors import AnchorManifest
from asif_index.errors import CollectionError
from connectors.base import AnchorRecord, Filter, Hit, ItemRecord, VectorStore, filter_matches


class MemoryStore(VectorStore):
    backend = "memory"

    def __init__(self, name: str = "asif") -> None:
        self.name = name
        self._manifest: AnchorManifest | None = None
        self._anchors: dict[int, AnchorRecord] = {}
        self._items: dict[str, ItemRecord] = {}
        self._created = False

    def create(self, manifest: AnchorManifest, recreate: bool = False) -> None:
        if self._created and not recreate:
            raise CollectionError(f"index '{self.name}' exists; pass recreate=True to replace it")
        self.__init__(self.name)
        self._created = True
        self._manifest = copy.deepcopy(manifest)

    def exists(self) -> bool:
        return self._created

    def drop(self) -> None:
        self.__init__(self.name)

    def read_manifest(self) -> AnchorManifest | None:
        return copy.deepcopy(self._manifest)

    def write_manifest(self, manifest: AnchorManifest) -> None:
        self._manifest = copy.deepcopy(manifest)

    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None:
        for a in anchors:
            self._anchors[int(a.id)] = a

    def delete_anchors(self, ids: list[int]) -> None:
        for i in ids:
            self._anchors.pop(int(i), None)

    def fetch_anchors(self) -> list[AnchorRecord]:
        return [self._anchors[i] for i in sorted(self._anchors)]

    def upsert_items(self, items: list[ItemRecord]) -> None:
        for it in items:
            self._items[it.id] = it

    def fetch_items(self, ids: list[str]) -> list[ItemRecord]:
        return [self._items[i] for i in ids if i in self._items]

    def existing_ids(self, ids: list[str]) -> set[str]:
        return {i for i in ids if i in self._items}

    def delete_items(self, ids: list[str]) -> None:
        for i in ids:
            self._items.pop(i, None)

    def count_items(self, flt: Filter | None = None) -> int:
        return sum(filter_matches(it.payload, it.modality, flt) for it in self._items.values())

    def search(self, indices, values, limit, flt=None) -> list[Hit]:
        q = dict(zip(np.asarray(indices).tolist(), np.asarray(values, np.float64).tolist()))
        scored = []
        for it in self._items.values():
            if not filter_matches(it.payload, it.modality, flt):
                continue
            s = sum(q.get(i, 0.0) * v for i, v in zip(it.sparse_indices.tolist(),
                                                      it.sparse_values.tolist()))
            if s > 0:
                scored.append((-s, it.id, it))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [Hit(it.id, -ns, it.modality, it.payload) for ns, _, it in scored[:limit]]

    def scroll_items(self, batch: int = 256) -> Iterator[list[ItemRecord]]:
        items = [self._items[k] for k in sorted(self._items)]
        for s in range(0, len(items), batch):
            yield items[s : s + batch]
