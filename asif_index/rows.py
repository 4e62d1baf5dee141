"""Checks of embedding matrices [n, d] shared by the anchors, the engine and the stores:
numpy only, so that what opens an index (anchors from storage) loads no torch."""

from __future__ import annotations

from typing import Any

import numpy as np

from asif_index.errors import NonFiniteError, ShapeError, ZeroVectorError


def _check_dim(shape: tuple, name: str, dim: int | None) -> None:
    if len(shape) != 2:
        raise ShapeError(f"{name} must be a 2-D array [n, d]; got shape {tuple(shape)}")
    if dim is not None and shape[1] != dim:
        raise ShapeError(
            f"{name} has dimension {shape[1]} but the anchors have dimension {dim}: "
            "embed it with the same encoder as the anchors of that modality"
        )


def validate_rows(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` (an array or a torch tensor) as a C-contiguous float32 [n, d] array or
    raise a precise error."""
    if type(x).__module__.startswith("torch"):  # a tensor (torch is loaded if one exists)
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    _check_dim(arr.shape, name, dim)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ShapeError(f"{name} must hold floats; got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise NonFiniteError(f"{name} has NaN or infinite values in rows {rows}; fix the input")
    return arr


def l2_normalize(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    if zero.any():
        rows = np.flatnonzero(zero)[:5].tolist()
        raise ZeroVectorError(
            f"{name} has all-zero rows {rows}; cosine similarity is undefined for them"
        )
    return x / norms[:, None]


__all__ = ["l2_normalize", "validate_rows"]
