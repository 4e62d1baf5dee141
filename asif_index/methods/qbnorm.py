"""Query-bank normalisation of retrieval scores: a training-free hubness correction.

Some items are "hubs": near many queries at once, they crowd the top of every ranking. The
inverted softmax (Smith et al., ICLR 2017, "Offline bilingual word vectors, orthogonal
transformations and the inverted softmax") and QB-Norm (Bogolin et al., CVPR 2022,
"Cross Modal Retrieval with Querybank Normalisation") score an item x for a query q by

    s(q, x) / T  -  log sum_b exp(s(b, x) / T)

over a bank of queries b: an item every query likes is discounted. Here the bank is every
``stride``-th anchor of the query's modality, projected as a query of that modality, so it
comes from the anchor set alone: no extra data, nothing to train, and it follows the anchor
version (a bank is built per version, so a search stays exact under live anchor updates).
Items and queries stay the index's relative vectors; the correction re-ranks the database's
top candidates, which gives the full re-ranking's order whenever the true top-10 lie in the
candidates (on Flickr8k dev, top-100 and a full re-rank agree to the query).
"""

from __future__ import annotations

from typing import Sequence

import numba as nb
import numpy as np

from asif_index.anchors import AnchorSet, Modality
from asif_index.errors import ConfigError
from asif_index.recipe import check_temperature
from asif_index.sparse import SparseBatch

DEFAULT_TEMPERATURE = 0.05  # Flickr8k dev: 0.04-0.06 is a plateau (docs/evaluation.md)
BANK_STRIDE = 5  # every 5th anchor: Flickr8k's five captions per photo give one each
CANDIDATES = 100


class QueryBank:
    """Relative vectors of the bank queries of one modality at one anchor version.

    anchors: the anchor set (its recipe's k and p for ``modality``); stride: every
    ``stride``-th anchor row is a bank query."""

    def __init__(self, anchors: AnchorSet, modality: Modality, stride: int = BANK_STRIDE,
                 **engine_options) -> None:
        if stride < 1:
            raise ConfigError(f"bank stride must be >= 1; got {stride}")
        if not len(anchors):
            raise ConfigError("a query bank needs anchors; add some first")
        rows = np.arange(0, len(anchors), stride)
        self.modality, self.version = modality, anchors.manifest.version
        self.queries = anchors.project(anchors.matrix(modality)[rows], modality,
                                       **engine_options)
        self._n = int(anchors.ids.max()) + 1
        self._csr = self.queries.to_csr(self._n)
        self._by_anchor = _by_anchor(self._csr)

    @classmethod
    def from_queries(cls, queries: SparseBatch, modality: Modality, version: int = 0
                     ) -> "QueryBank":
        """A bank of given relative vectors (e.g. a log of past queries, as QB-Norm uses)."""
        bank = cls.__new__(cls)
        bank.modality, bank.version, bank.queries = modality, version, queries
        bank._n = int(queries.indices.max(initial=0)) + 1
        bank._csr = queries.to_csr(bank._n)
        bank._by_anchor = _by_anchor(bank._csr)
        return bank

    def __len__(self) -> int:
        return len(self.queries)

    def log_partition(self, items: Sequence[tuple[np.ndarray, np.ndarray]],
                      temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
        """log sum_b exp(s(b, x) / T) for each item x given as (anchor ids, values):
        float64 [n_items]."""
        check_temperature(temperature)
        if not items:
            return np.zeros(0)
        idx = [np.asarray(i, np.int64) for i, _ in items]
        val = [np.asarray(v, np.float64) for _, v in items]
        keep = [i < self._n for i in idx]  # anchors newer than the bank meet no bank query
        ptr = np.cumsum([0] + [int(k.sum()) for k in keep]).astype(np.int64)
        out = np.empty(len(items), np.float64)
        indptr, rows, vals = self._by_anchor
        _log_partitions(indptr, rows, vals, ptr,
                        np.concatenate([i[k] for i, k in zip(idx, keep)]).astype(np.int64),
                        np.concatenate([v[k] for v, k in zip(val, keep)]),
                        len(self.queries), 1.0 / float(temperature), out)
        return out

    def rescore(self, scores: np.ndarray, items: Sequence[tuple[np.ndarray, np.ndarray]],
                temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
        """Normalised scores of candidates for one query: scores [n] / T - log Z [n]."""
        return np.asarray(scores, np.float64) / temperature - self.log_partition(items,
                                                                                 temperature)

    def rescore_matrix(self, scores: np.ndarray, items: SparseBatch,
                       temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
        """Normalised scores [Q, n] of every query against every item (the exact path)."""
        logz = self.log_partition([items.row(r) for r in range(len(items))], temperature)
        return np.asarray(scores, np.float64) / temperature - logz[None, :]


def _by_anchor(csr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bank by anchor (CSC: for each anchor, the bank queries holding it and their
    weights), the layout an item's anchors index into."""
    csc = csr.tocsc()
    return (csc.indptr.astype(np.int64), csc.indices.astype(np.int64),
            csc.data.astype(np.float64))


@nb.njit(parallel=True, cache=True)
def _log_partitions(indptr, rows, vals, item_ptr, item_idx, item_val, n_bank, inv_t, out):
    """out[r] = log sum_b exp(s(b, x_r) / T): each item's dots with every bank query are
    accumulated from its anchors' bank lists (the cost is the item's entries times the bank
    queries per anchor, not the bank's size), then a stable log-sum-exp. Bank queries that
    share no anchor with the item score 0 and count exp(0) = 1, as in the dense sum."""
    for r in nb.prange(len(item_ptr) - 1):
        acc = np.zeros(n_bank, np.float64)
        for j in range(item_ptr[r], item_ptr[r + 1]):
            a, v = item_idx[j], item_val[j]
            for t in range(indptr[a], indptr[a + 1]):
                acc[rows[t]] += v * vals[t]
        top = acc.max() * inv_t
        total = 0.0
        for b in range(n_bank):
            total += np.exp(acc[b] * inv_t - top)
        out[r] = top + np.log(total)


__all__ = ["BANK_STRIDE", "CANDIDATES", "DEFAULT_TEMPERATURE", "QueryBank", "check_temperature"]
