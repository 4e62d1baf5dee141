"""CPU kernel: a BLAS/AMX matrix product per block, scanned while hot by compiled loops.

Blocks over queries and over anchors with one running result per query row (the model is
faiss ``contrib/exhaustive_search.py``): memory is ``O(query_block * anchor_block)`` for
similarities plus ``O(B * cap)`` for candidate buffers, whatever N is. With hardware bf16
(AMX / AVX512-BF16) the product runs in bf16 and candidates are certified with
:mod:`asif_index.engine.bounds` (the bf16 product is rounded on output, so ``E_rel`` applies).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from asif_index.engine import bounds
from asif_index.engine import cpu_kernels as kern

# "auto" on CPU: bf16 selection pays off only with many anchors and a small k/N (measured in
# benchmarks/topk.py on a 2-core AMX CPU: bf16/fp32 speed 1.06-4.06 for N >= 1e5 and
# k/N <= 1%; 0.86-0.99 at k/N = 2%; 0.55-0.76 at N = 1e4 with k >= 800).
AUTO_BF16_MIN_N = 50_000
AUTO_BF16_MAX_K_FRACTION = 0.01


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


class CpuKernel:
    """Exact top-k on the CPU, fp32 or bf16-selected and fp32-rescored.

    Args:
        a32: float32 [N, d] unit anchors (numpy, kept resident).
        precision: ``"fp32"`` or ``"bf16"``.
        auto: the precision was chosen automatically (large k/N then scans in fp32).
    """

    name = "cpu"

    def __init__(self, a32: np.ndarray, precision: str, auto: bool,
                 query_block: int | None, anchor_block: int | None) -> None:
        self.precision, self.auto = precision, auto
        self.n, self.dim = a32.shape
        self._a32_np = a32
        self._a32 = torch.from_numpy(a32)
        self._query_block, self._anchor_block = query_block, anchor_block
        self._alp = None
        if precision == "bf16":
            self._alp = self._a32.to(torch.bfloat16).contiguous()
            self._a_norm_max, self._a_resid_max = bounds.residual_stats(self._a32, self._alp)

    @property
    def resident_bytes(self) -> int:
        extra = self._alp.numel() * 2 if self._alp is not None else 0
        return self._a32.numel() * 4 + extra

    def _blocks(self, b: int) -> tuple[int, int]:
        elt = 4 if self.precision == "fp32" else 2
        # Measured best on a 2-core AMX CPU: similarity blocks of about 4-8 MB stay in
        # cache while the compiled scan reads them.
        qb = self._query_block or min(b, 512)
        ab = self._anchor_block or max(4096, (8 << 20) // (qb * elt))
        return max(1, qb), max(1, min(ab, self.n))

    def search(self, q: np.ndarray, k: int, out_v: np.ndarray, out_i: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Fill ``out_v``/``out_i`` [b, k] for unit queries ``q`` [b, d]; returns (candidates
        per row, certified per row)."""
        b = q.shape[0]
        cap = max(4 * k, 256)
        qb, ab = self._blocks(b)
        large_k = self.auto and k > AUTO_BF16_MAX_K_FRACTION * self.n
        if self.precision == "fp32" or large_k:
            self.scan_fp32(q, k, cap, qb, ab, out_v, out_i)
            return np.zeros(b), np.ones(b, bool)
        e_rel = np.float32(bounds.output_rounding(self.precision))
        qt = torch.from_numpy(q)
        qlp = qt.to(torch.bfloat16)
        g = bounds.accumulation_factor(self.dim)
        e_in = bounds.input_error(qt, qlp, self._a_norm_max, self._a_resid_max, g)
        e_in = e_in.numpy().astype(np.float32)
        buf = np.zeros((b, cap), np.int32)
        buf_i = np.zeros((b, cap), np.int64)
        cnt = np.zeros(b, np.int64)
        thr = np.full(b, -1, np.int32)
        overflow = np.zeros(b, np.bool_)
        for qs in range(0, b, qb):
            sl = slice(qs, min(b, qs + qb))
            qblk = qlp[sl]
            for s in range(0, self.n, ab):
                sim = torch.mm(qblk, self._alp[s : s + ab].t())
                kern.scan_bf16(
                    sim.view(torch.int16).numpy(), s, buf[sl], buf_i[sl], cnt[sl], thr[sl],
                    k, e_in[sl], e_rel, overflow[sl],
                )
        kern.prune_window(buf, buf_i, cnt, thr, k, e_in, e_rel)
        kern.rescore_top(q, self._a32_np, buf_i, cnt, k, out_v, out_i)
        t_excl = kern.keys_to_f32(thr)
        never = t_excl == -np.inf  # nothing was ever excluded: trivially exact
        t_fin = np.where(never, 0.0, t_excl)
        bound = t_fin + e_in + e_rel * np.abs(t_fin)
        ok = (~overflow) & (never | (out_v[:, k - 1] >= bound))
        bad = np.flatnonzero(~ok)
        if bad.size:
            fv = np.empty((bad.size, k), np.float32)
            fi = np.empty((bad.size, k), np.int64)
            self.scan_fp32(q[bad], k, cap, qb, ab, fv, fi)
            out_v[bad] = fv
            out_i[bad] = fi
        return cnt, ok

    def scan_fp32(self, q, k, cap, qb, ab, out_v, out_i) -> None:
        b = q.shape[0]
        buf = np.zeros((b, cap), np.float32)
        buf_i = np.zeros((b, cap), np.int64)
        cnt = np.zeros(b, np.int64)
        thr = np.full(b, -np.inf, np.float32)
        qt = torch.from_numpy(q)
        for qs in range(0, b, qb):
            sl = slice(qs, min(b, qs + qb))
            for s in range(0, self.n, ab):
                sim = torch.mm(qt[sl], self._a32[s : s + ab].t()).numpy()
                kern.scan_f32(sim, s, buf[sl], buf_i[sl], cnt[sl], thr[sl], k)
        kern.finalize_f32(buf, buf_i, cnt, k, out_v, out_i)
