"""The top-k engine (see :mod:`asif_index.engine.core`): CPU and CUDA kernels and the error
bounds that keep half-precision selection exact."""

from asif_index.engine.core import (
    AUTO_BF16_MIN_N,
    EngineStats,
    TopKEngine,
    exact_topk_reference,
)
from asif_index.engine.cpu import AUTO_BF16_MAX_K_FRACTION, cpu_has_fast_bf16
from asif_index.engine.cuda import Tiles
from asif_index.engine.inputs import l2_normalize, resolve_device, validate_rows

__all__ = [
    "AUTO_BF16_MAX_K_FRACTION", "AUTO_BF16_MIN_N", "EngineStats", "Tiles", "TopKEngine",
    "cpu_has_fast_bf16", "exact_topk_reference", "l2_normalize", "resolve_device",
    "validate_rows",
]
