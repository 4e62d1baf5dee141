"""Fixed-width sparse batches of relative vectors and their database formats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asif_index.errors import ShapeError


@dataclass(frozen=True)
class SparseBatch:
    """B relative vectors with k' = min(k, N) entries each.

    Attributes:
        indices: int64 [B, k'] anchor ids (not row positions), by descending similarity.
        values: float32 [B, k'] relative-vector weights (clipped, powered, L2-normalised).
        kth_similarity: float32 [B] raw cosine similarity of each row's k-th anchor: a new
            anchor changes a row's vector only if it beats this (incremental updates).
    """

    indices: np.ndarray
    values: np.ndarray
    kth_similarity: np.ndarray

    def __post_init__(self) -> None:
        if self.indices.shape != self.values.shape or self.indices.ndim != 2:
            raise ShapeError(
                f"indices {self.indices.shape} and values {self.values.shape} must be equal 2-D"
            )

    def __len__(self) -> int:
        return self.indices.shape[0]

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Non-zero (indices, values) of row i, zeros dropped."""
        keep = self.values[i] > 0
        return self.indices[i][keep], self.values[i][keep]

    def to_csr(self, n_cols: int | None = None):
        """scipy CSR [B, max id + 1] (explicit zeros removed), built without Python loops."""
        import scipy.sparse as sp

        b, k = self.indices.shape
        cols = int(self.indices.max()) + 1 if n_cols is None and self.indices.size else n_cols
        # Copies: eliminate_zeros/sort_indices work in place and would scramble this batch.
        m = sp.csr_matrix(
            (self.values.ravel().copy(), self.indices.ravel().copy(), np.arange(0, b * k + 1, k)),
            shape=(b, cols or 0),
        )
        m.eliminate_zeros()
        m.sort_indices()
        return m

    def dot(self, other: "SparseBatch") -> np.ndarray:
        """Dense [B, B'] matrix of dot products between two batches."""
        n = int(max(self.indices.max(initial=0), other.indices.max(initial=0))) + 1
        return (self.to_csr(n) @ other.to_csr(n).T).toarray()

    def take(self, rows: np.ndarray) -> "SparseBatch":
        return SparseBatch(self.indices[rows], self.values[rows], self.kth_similarity[rows])

    @staticmethod
    def concat(batches: list["SparseBatch"]) -> "SparseBatch":
        return SparseBatch(
            np.concatenate([b.indices for b in batches]),
            np.concatenate([b.values for b in batches]),
            np.concatenate([b.kth_similarity for b in batches]),
        )
