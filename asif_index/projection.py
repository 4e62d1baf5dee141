"""Relative projection: embeddings -> sparse ASIF relative vectors."""

from __future__ import annotations

import numpy as np

from asif_index.errors import AnchorError, ConfigError
from asif_index.sparse import SparseBatch
from asif_index.topk_engine import TopKEngine


def relative_weights(sims: np.ndarray, p: float) -> np.ndarray:
    """Clip negatives to 0, raise to ``p``, L2-normalise each row (all-zero rows stay 0).

    sims: float32 [B, k] top-k cosine similarities. Returns float32 [B, k].
    """
    w = np.maximum(sims, 0.0, dtype=np.float32) ** np.float32(p)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return np.divide(w, norms, out=np.zeros_like(w), where=norms > 0)


def check_kp(k: int, p: float) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer; got {k!r}")
    if not np.isfinite(p) or p <= 0:
        raise ConfigError(f"p must be a positive finite number; got {p!r}")


def project(
    embeddings: np.ndarray,
    anchors: np.ndarray | TopKEngine,
    anchor_ids: np.ndarray | None = None,
    *,
    k: int = 800,
    p: float = 8.0,
    **engine_options,
) -> SparseBatch:
    """Project embeddings onto anchors of the same modality.

    Args:
        embeddings: float [B, d] (normalised here).
        anchors: float [N, d] anchor embeddings of that modality, or a prepared
            :class:`TopKEngine` (reuse one across calls: it holds the resident matrix).
        anchor_ids: uint32/int64 [N] ids for the rows; defaults to ``arange(N)``.
        k: anchors kept per row (capped at N). p: power applied to clipped similarities.

    Returns:
        :class:`SparseBatch` with anchor ids, weights and each row's k-th similarity.
    """
    check_kp(k, p)
    engine = anchors if isinstance(anchors, TopKEngine) else TopKEngine(anchors, **engine_options)
    if anchor_ids is None:
        anchor_ids = np.arange(engine.n, dtype=np.int64)
    anchor_ids = np.asarray(anchor_ids, dtype=np.int64)
    if anchor_ids.shape != (engine.n,):
        raise AnchorError(f"anchor_ids must have shape ({engine.n},); got {anchor_ids.shape}")
    sims, rows = engine.search(embeddings, k)
    return SparseBatch(anchor_ids[rows], relative_weights(sims, p), sims[:, -1].copy())
