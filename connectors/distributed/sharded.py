"""An anchor set larger than one device, split by anchor id range across Ray actors.

Each :class:`AnchorShard` actor holds its rows of the anchor matrix in a resident
:class:`~asif_index.engine.TopKEngine` (on a GPU when Ray gives the actor one) and returns its
exact top-k. The driver merges the shards' lists: the overall top-k is contained in their
union, because any anchor missing from a shard's list is below that shard's k-th value and so
below k others. Ties go to the lowest anchor row, as in one engine, so the merged relative
vectors equal :meth:`AnchorSet.project`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asif_index._optional import require
from asif_index.anchors import AnchorSet, Modality
from asif_index.errors import AnchorError, ConfigError, ShapeError
from asif_index.sparse import SparseBatch


class _Shard:
    """The actor body: rows [lo, hi) of the anchor matrix and their global row numbers."""

    def __init__(self, matrix: np.ndarray, first_row: int, **engine_options: Any) -> None:
        from asif_index.engine import TopKEngine

        self.first_row = first_row
        self.n = len(matrix)
        self.engine = TopKEngine(matrix, **engine_options)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(sims float32 [B, k'], global rows int64 [B, k']) of this shard's top-k."""
        sims, rows = self.engine.search(queries, min(k, self.n))
        sims, rows = (np.asarray(x.cpu()) if hasattr(x, "cpu") else np.asarray(x)
                      for x in (sims, rows))
        return sims.astype(np.float32), rows.astype(np.int64) + self.first_row

    def info(self) -> dict:
        return {"first_row": self.first_row, "rows": self.n, "device": str(self.engine.device)}


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of the union of per-shard top-k lists: (sims [B, k], rows [B, k]),
    descending, ties to the lowest row."""
    sims = np.concatenate([s for s, _ in parts], axis=1)
    rows = np.concatenate([r for _, r in parts], axis=1)
    order = np.lexsort((rows, -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(rows, order, 1)


class ShardedProjector:
    """Relative vectors of one modality, computed by ``shards`` Ray actors.

    anchors: the anchor set (its recipe's centring is applied here, on the driver);
    actor_options: passed to ``ray.remote`` (e.g. ``{"num_gpus": 1}``), engine_options to each
    shard's :class:`TopKEngine`. Use :meth:`project` like :meth:`AnchorSet.project`."""

    def __init__(self, anchors: AnchorSet, modality: Modality, shards: int,
                 actor_options: dict | None = None, **engine_options: Any) -> None:
        ray = require("ray", "sharded anchors")
        if not ray.is_initialized():
            raise ConfigError("Ray is not running here: call ray.init() (or ray.init(address=...)"
                              " for a cluster) before sharding anchors")
        if shards < 1:
            raise ConfigError(f"shards must be >= 1; got {shards}")
        n = len(anchors)
        if n < shards:
            raise AnchorError(f"{n} anchors cannot fill {shards} shards")
        self.anchors, self.modality = anchors, modality
        self.n = n  # with search(), the engine shape projection.project takes
        m = anchors.engine_matrix(modality)
        self.dim = m.shape[1]
        bounds = np.linspace(0, n, shards + 1).astype(int)
        actor = ray.remote(**(actor_options or {"num_cpus": 0}))(_Shard)
        # each shard's rows go to the object store once, then live in the actor
        self.shards = [actor.remote(ray.put(np.ascontiguousarray(m[lo:hi])), int(lo),
                                    **engine_options)
                       for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(sims [B, k], anchor rows [B, k]): the merged exact top-k of (already centred)
        queries."""
        import ray

        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            # checked here: inside an actor it would surface as a wrapped remote error
            raise ShapeError(f"{self.modality} queries must be [B, {self.dim}]; got {x.shape}")
        ref = ray.put(x)
        parts = ray.get([s.search.remote(ref, k) for s in self.shards])
        return merge_topk(parts, min(k, len(self.anchors)))

    def project(self, embeddings: np.ndarray, k: int | None = None, p: float | None = None
                ) -> SparseBatch:
        """The same :class:`SparseBatch` as ``anchors.project(embeddings, modality, k, p)``."""
        return self.anchors.project(np.asarray(embeddings, np.float32), self.modality, k, p,
                                    engine=self)

    def info(self) -> list[dict]:
        import ray

        return ray.get([s.info.remote() for s in self.shards])

    def close(self) -> None:
        import ray

        for s in self.shards:
            ray.kill(s)
        self.shards = []
