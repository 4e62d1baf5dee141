"""QB-Norm folded into the stored vectors: the normaliser is a property of the item.

The normalised score ``s(q, x)/T - log Z(x)`` with ``log Z(x) = log sum_b exp(s(b, x)/T)``
depends on the query only through ``s(q, x)``, so ranking by it is ranking by

    s(q, x) + (c - T log Z(x))

with any constant ``c``. Each item stores ``fold(x) = c - T log Z(x)`` as one extra entry of
its sparse vector, at the reserved dimension :data:`FOLD_DIM`, and a normalised query adds
weight 1 there: the database's own dot product is then the normalised ranking over the whole
collection, with no candidate re-read and no per-query bank pass. ``c = T log |bank| + 1``
keeps every fold value in (0, 1] (``s(b, x) <= 1`` for unit vectors), as Milvus' sparse
vectors need positive values.

The bank stays fixed between updates (it is frozen at ``bank_version``): it is then the bank
of anchors visible at that version, projected against them, and a fold value changes only when
its item's vector changes. An anchor update re-projects exactly the items whose vector
changes and recomputes their fold value, so every stored value stays exact. New anchors are
not in the bank (they meet no bank query, adding 0 to s(b, x)); an item whose vector held a
removed anchor is re-projected without it. A rebuild, or an update while the index holds no
items, freezes a new bank.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from asif_index.anchors import AnchorSet
from asif_index.errors import ConfigError
from asif_index.recipe import check_temperature

# Above every anchor id (ids are sequential from 0) and below 2^32 - 1, the largest sparse
# index Qdrant and Milvus accept.
FOLD_DIM = 4_294_967_000
FOLD_KEY = "qbnorm_fold"  # manifest.extra entry holding the FoldSpec


def other(modality: str) -> str:
    return "text" if modality == "image" else "image"


@dataclass(frozen=True)
class FoldSpec:
    """The frozen bank: anchors visible at ``bank_version``, every ``stride``-th row of each
    modality, at ``temperature``; ``bank_size`` queries per modality."""

    bank_version: int
    temperature: float
    bank_size: int
    stride: int

    @property
    def offset(self) -> float:
        """c: fold values c - T log Z lie in (0, 1] since log |bank| <= log Z <= that + 1/T."""
        return self.temperature * math.log(self.bank_size) + 1.0 + 1e-3

    def to_dict(self) -> dict[str, Any]:
        return {"bank_version": self.bank_version, "temperature": self.temperature,
                "bank_size": self.bank_size, "stride": self.stride}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "FoldSpec":
        try:
            spec = cls(int(doc["bank_version"]), float(doc["temperature"]),
                       int(doc["bank_size"]), int(doc["stride"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the index's folded QB-Norm settings {doc!r} are damaged "
                              f"({exc}); rebuild the index ('asif-index anchors rebuild')") from exc
        check_temperature(spec.temperature)
        if spec.bank_size < 1 or spec.stride < 1:
            raise ConfigError(f"folded QB-Norm bank of {spec.bank_size} queries (stride "
                              f"{spec.stride}) is empty; rebuild the index")
        return spec

    @classmethod
    def freeze(cls, anchors: AnchorSet, temperature: float, stride: int) -> "FoldSpec":
        if not len(anchors):
            raise ConfigError("folded QB-Norm needs anchors; add some first")
        return cls(anchors.manifest.version, float(temperature),
                   len(range(0, len(anchors), stride)), stride)


class QBNormFold:
    """One index's folded QB-Norm: the spec (all a search needs) and the frozen banks, built
    on first use from ``bank_anchors()`` (the anchor set at the bank version): only writers
    and anchor updates compute fold values, readers never build a bank."""

    def __init__(self, spec: FoldSpec, bank_anchors: Callable[[], AnchorSet],
                 engine_options: dict | None = None) -> None:
        self.spec = spec
        self._load = bank_anchors
        self._options = dict(engine_options or {})
        self._banks: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def temperature(self) -> float:
        return self.spec.temperature

    def bank(self, query_modality: str):
        """The frozen :class:`~asif_index.methods.qbnorm.QueryBank` of one query modality."""
        from asif_index.methods.qbnorm import QueryBank

        bank = self._banks.get(query_modality)
        if bank is None:
            with self._lock:
                bank = self._banks.get(query_modality)
                if bank is None:
                    anchors = self._load()
                    if anchors.manifest.version != self.spec.bank_version:
                        raise ConfigError(
                            f"folded QB-Norm bank: got anchors at version "
                            f"{anchors.manifest.version}, the bank is version "
                            f"{self.spec.bank_version}")
                    bank = QueryBank(anchors, query_modality, self.spec.stride, **self._options)
                    self._banks[query_modality] = bank
                    if len(self._banks) == 2:  # both built: let the bank's anchor set go
                        self._load = _built
        return bank

    def values(self, item_modality: str, rows: Sequence[tuple[np.ndarray, np.ndarray]]
               ) -> np.ndarray:
        """fold(x) = c - T log Z(x) float32 [n] of items of one modality, Z over the bank of
        the other modality (the queries that normalise them: text for photos)."""
        logz = self.bank(other(item_modality)).log_partition(list(rows), self.temperature)
        return (self.spec.offset - self.temperature * logz).astype(np.float32)

    def fold_records(self, records: Sequence[Any]) -> None:
        """Set ``fold`` on item records (anything with modality, sparse_indices,
        sparse_values) in place."""
        for mod in ("image", "text"):
            group = [r for r in records if r.modality == mod]
            if group:
                vals = self.values(mod, [(r.sparse_indices, r.sparse_values) for r in group])
                for r, v in zip(group, vals):
                    r.fold = float(v)

    def normalised(self, db_score: float) -> float:
        """A folded database score s + fold(x) -> the normalised score s/T - log Z."""
        return (float(db_score) - self.spec.offset) / self.temperature

    def warm(self) -> None:
        for mod in ("image", "text"):
            self.bank(mod)

    def __getstate__(self) -> dict:
        # a worker gets the built banks, not the loader (which holds a database client)
        self.warm()
        return {"spec": self.spec, "_banks": dict(self._banks), "_options": self._options}

    def __setstate__(self, state: dict) -> None:
        self.spec, self._banks, self._options = state["spec"], state["_banks"], state["_options"]
        self._lock = threading.Lock()

        self._load = _built


def _built() -> AnchorSet:
    raise ConfigError("both folded QB-Norm banks are built; nothing to load")


def fold_query(indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A query's entries plus weight 1 at :data:`FOLD_DIM` (the database adds fold(x))."""
    return (np.concatenate([np.asarray(indices, np.int64), [FOLD_DIM]]),
            np.concatenate([np.asarray(values, np.float32), [1.0]]).astype(np.float32))


def split_fold(indices: np.ndarray, values: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """A stored vector's anchor entries and its fold value (None: not folded)."""
    indices = np.asarray(indices)
    at = np.flatnonzero(indices == FOLD_DIM)
    if not len(at):
        return indices, values, None
    fold = float(values[at[0]])
    keep = indices != FOLD_DIM
    return indices[keep], np.asarray(values)[keep], fold


def with_fold(indices: np.ndarray, values: np.ndarray, fold: float | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """A record's anchor entries plus its fold value at :data:`FOLD_DIM`, as stored."""
    if fold is None:
        return indices, values
    return (np.concatenate([np.asarray(indices, np.int64), [FOLD_DIM]]),
            np.concatenate([np.asarray(values, np.float32), [np.float32(fold)]]))


__all__ = ["FOLD_DIM", "FOLD_KEY", "FoldSpec", "QBNormFold", "fold_query", "split_fold",
           "with_fold"]
