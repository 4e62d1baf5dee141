"""Rigorous error bounds that certify a half-precision candidate selection as exact.

Half precision is only used to *select candidates*; every returned value is an fp32 dot
product. With ``q``, ``a`` the fp32 unit vectors and ``q~``, ``a~`` their half-precision
roundings (residuals ``dq = q - q~``, ``da = a - a~``), the approximate similarity ``s~`` of a
half-precision product with fp32 accumulation satisfies

    |s~ - s| <= E_in + E_rel * |s~|,
    E_in  = |q| * max_j|da_j| + |dq| * max_j|a_j| + |dq| * max_j|da_j| + g_d * |q~| * max|a~|
    E_rel = 2u / (1 - 2u)   only when the product is rounded to half precision on output
                            (CPU bf16 GEMM; u = 2^-8 for bf16, 2^-11 for fp16); 0 when the fp32
                            accumulator is compared directly (the fused CUDA kernel)

by Cauchy-Schwarz on the residual vectors, with ``g_d`` bounding fp32 accumulation of ``d``
products. If every anchor left out of the candidates has ``s~ < t``, its exact similarity is
below ``t + E_in + E_rel * |t|``; when the exact k-th value among the rescored candidates
reaches that bound, the returned top-k is the exact one, ties included (everything left out is
strictly below the k-th value). Rows that miss the bound are recomputed in fp32.
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11}


def output_rounding(precision: str) -> float:
    """E_rel of a product whose output is rounded to ``precision``."""
    u = UNIT_ROUNDOFF[precision]
    return 2 * u / (1 - 2 * u)


def accumulation_factor(d: int, *, tensor_cores: bool = False) -> float:
    """``g_d``: relative error of an fp32 sum of ``d`` products. Tensor-core MMA units align
    addends by truncation rather than rounding, so their factor is taken 4x the textbook
    ``d u / (1 - d u)`` (u = 2^-24), which covers one extra unit in the last place per add."""
    u = 2.0**-24 * (4 if tensor_cores else 1)
    return d * u / (1 - d * u)


def residual_stats(a32: torch.Tensor, alp: torch.Tensor,
                   block: int = 1 << 20) -> tuple[float, float]:
    """(max |a_j|, max |da_j|) of an anchor matrix and its half-precision copy, in row blocks
    (a whole-matrix difference would briefly need another fp32 copy of the anchors: 30 GB at
    10^7 x 768)."""
    norm = resid = 0.0
    for s in range(0, a32.shape[0], block):
        a = a32[s:s + block]
        norm = max(norm, float(a.norm(dim=1).max()))
        resid = max(resid, float((a - alp[s:s + block].float()).norm(dim=1).max()))
    return norm, resid


def input_error(q32: torch.Tensor, qlp: torch.Tensor, a_norm_max: float, a_resid_max: float,
                g: float) -> torch.Tensor:
    """E_in per query row (float32 [b]) for queries ``q32`` and their rounding ``qlp``."""
    dq = (q32 - qlp.float()).norm(dim=1)
    qn = q32.norm(dim=1)
    amax = a_norm_max + a_resid_max
    return qn * a_resid_max + dq * a_norm_max + dq * a_resid_max + g * (qn + dq) * amax
