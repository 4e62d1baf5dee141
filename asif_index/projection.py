"""Relative projection: embeddings -> sparse ASIF relative vectors."""

from __future__ import annotations

import numpy as np
import torch

from asif_index.errors import AnchorError, ConfigError
from asif_index.sparse import SparseBatch
from asif_index.engine import TopKEngine


def relative_weights(sims: np.ndarray, p: float, scale: np.ndarray | None = None) -> np.ndarray:
    """Clip negatives to 0, raise to ``p``, times ``scale`` (per-entry anchor weights, e.g. a
    recipe's hub weights; None: 1), L2-normalise each row (all-zero rows stay 0).

    sims: float32 [B, k] top-k cosine similarities; scale: float [B, k]. Returns float32 [B, k].
    """
    w = np.maximum(sims, 0.0, dtype=np.float32) ** np.float32(p)
    if scale is not None:
        w = w * np.asarray(scale, np.float32)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return np.divide(w, norms, out=np.zeros_like(w), where=norms > 0)


def relative_weights_tensor(sims: torch.Tensor, p: float,
                            scale: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`relative_weights` on the device (float32 [B, k] in and out)."""
    w = sims.clamp(min=0.0).pow(float(p))
    if scale is not None:
        w = w * scale
    norms = w.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, w / norms.clamp(min=torch.finfo(torch.float32).tiny), 0.0)


def check_kp(k: int, p: float) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer; got {k!r}")
    if not np.isfinite(p) or p <= 0:
        raise ConfigError(f"p must be a positive finite number; got {p!r}")


def project(
    embeddings: np.ndarray | torch.Tensor,
    anchors: np.ndarray | TopKEngine,
    anchor_ids: np.ndarray | None = None,
    *,
    k: int = 800,
    p: float = 8.0,
    anchor_weights: np.ndarray | None = None,
    **engine_options,
) -> SparseBatch:
    """Project embeddings onto anchors of the same modality.

    Args:
        embeddings: float [B, d] (normalised here). A torch tensor (e.g. an encoder's output
            on the GPU) is projected where the engine lives and only the final arrays of the
            sparse batch are copied to the host.
        anchors: float [N, d] anchor embeddings of that modality, or a prepared
            :class:`TopKEngine` (reuse one across calls: it holds the resident matrix), or
            any object with its ``n`` and ``search(queries, k) -> (sims, rows)``.
        anchor_ids: uint32/int64 [N] ids for the rows; defaults to ``arange(N)``.
        k: anchors kept per row (capped at N). p: power applied to clipped similarities.
        anchor_weights: float [N], a weight per anchor row multiplied into its entries before
            the L2 normalisation (a recipe's hub weights); selection and the k-th similarity
            do not change.

    Returns:
        :class:`SparseBatch` with anchor ids, weights and each row's k-th similarity.
    """
    check_kp(k, p)
    # anything with the engine's shape (n, search) projects: a TopKEngine, or the sharded
    # engine of connectors.distributed that merges several
    engine = anchors if hasattr(anchors, "search") else TopKEngine(anchors, **engine_options)
    if anchor_ids is None:
        anchor_ids = np.arange(engine.n, dtype=np.int64)
    anchor_ids = np.asarray(anchor_ids, dtype=np.int64)
    if anchor_ids.shape != (engine.n,):
        raise AnchorError(f"anchor_ids must have shape ({engine.n},); got {anchor_ids.shape}")
    if anchor_weights is not None:
        anchor_weights = np.asarray(anchor_weights, np.float32)
        if anchor_weights.shape != (engine.n,):
            raise AnchorError(f"anchor_weights must have shape ({engine.n},); got "
                              f"{anchor_weights.shape}")
    sims, rows = engine.search(embeddings, k)
    if isinstance(sims, torch.Tensor):
        scale = (None if anchor_weights is None
                 else torch.from_numpy(anchor_weights).to(sims.device)[rows])
        w = relative_weights_tensor(sims, p, scale)
        kth = sims[:, -1] if sims.shape[0] else sims.new_zeros(0)
        sims_kth, rows, w = kth.cpu().numpy(), rows.cpu().numpy(), w.cpu().numpy()
        return SparseBatch(anchor_ids[rows], w, sims_kth.copy())
    scale = None if anchor_weights is None else anchor_weights[rows]
    return SparseBatch(anchor_ids[rows], relative_weights(sims, p, scale), sims[:, -1].copy())
