"""Input validation and device selection shared by every engine kernel."""

from __future__ import annotations

import numpy as np
import torch

from asif_index.errors import ConfigError, NonFiniteError, ShapeError, ZeroVectorError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device '{device}' is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available; use 'cpu'")
    return dev


def _check_dim(shape: tuple, name: str, dim: int | None) -> None:
    if len(shape) != 2:
        raise ShapeError(f"{name} must be a 2-D array [n, d]; got shape {tuple(shape)}")
    if dim is not None and shape[1] != dim:
        raise ShapeError(
            f"{name} has dimension {shape[1]} but the anchors have dimension {dim}: "
            "embed it with the same encoder as the anchors of that modality"
        )


def validate_rows(x: np.ndarray | torch.Tensor, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 [n, d] array or raise a precise error."""
    if isinstance(x, torch.Tensor):
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


def validate_normalize_tensor(x: torch.Tensor, name: str, dim: int | None,
                              device: torch.device) -> torch.Tensor:
    """A torch tensor checked where it lives and returned L2-normalised as contiguous float32
    [n, d] on ``device``. One device sync covers both checks (finite, no zero row): on a GPU
    each sync costs a round trip, which is most of a single query's latency. CPU <-> GPU
    copies happen only when the tensor is on another device than the engine."""
    t = x.detach()
    if t.ndim == 1:
        t = t[None, :]
    _check_dim(tuple(t.shape), name, dim)
    if not t.is_floating_point():
        raise ShapeError(f"{name} must hold floats; got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.float32).contiguous()
    norms = t.norm(dim=1)
    nonfinite = ~torch.isfinite(t).all(dim=1)
    zero = norms == 0
    any_nonfinite, any_zero = torch.stack([nonfinite.any(), zero.any()]).tolist()
    if any_nonfinite:
        rows = nonfinite.nonzero().flatten()[:5].tolist()
        raise NonFiniteError(f"{name} has NaN or infinite values in rows {rows}; fix the input")
    if any_zero:
        rows = zero.nonzero().flatten()[:5].tolist()
        raise ZeroVectorError(
            f"{name} has all-zero rows {rows}; cosine similarity is undefined for them"
        )
    return t / norms[:, None]


def l2_normalize(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    if zero.any():
        rows = np.flatnonzero(zero)[:5].tolist()
        raise ZeroVectorError(
            f"{name} has all-zero rows {rows}; cosine similarity is undefined for them"
        )
    return x / norms[:, None]
