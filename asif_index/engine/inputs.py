"""Input validation and device selection shared by every engine kernel."""

from __future__ import annotations

import torch

from asif_index.errors import ConfigError, NonFiniteError, ShapeError, ZeroVectorError
from asif_index.rows import _check_dim, l2_normalize, validate_rows


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


__all__ = ["l2_normalize", "resolve_device", "validate_normalize_tensor", "validate_rows"]
