"""Exact, memory-bounded top-k of cosine similarities against a large anchor matrix.

Blocks over queries and over anchors with one running result per query row (the model is
faiss ``contrib/exhaustive_search.py``): memory is ``O(query_block * anchor_block)`` for
similarities plus ``O(B * k)`` for results, whatever N is.

Two precisions, both exact:

* ``fp32``: fp32 matrix product, every block scanned against the row's running k-th value.
* ``bf16`` (CPU with AMX/AVX512-BF16) / ``fp16`` (CUDA): the anchor matrix is kept resident
  in half precision and the product runs there (5x faster than fp32 on an AMX CPU). Half
  precision values are only used to *select candidates*; every returned value is an exact
  fp32 dot product. Exactness is certified per row with a rigorous error bound:

      |s~ - s| <= E_in + E_rel * |s~|,
      E_in  = |q| * max_j|da_j| + |dq| * max_j|a_j| + |dq| * max_j|da_j| + g_d * |q~| * max|a~|
      E_rel = 2u / (1 - 2u)    (output rounding, u = 2^-8 for bf16, 2^-11 for fp16)

  where ``dq``/``da`` are the exact rounding residuals of query and anchor (Cauchy-Schwarz on
  the residual vectors) and ``g_d = d * 2^-24`` bounds fp32 accumulation. Candidates are all
  anchors within twice that bound of the running k-th approximate value; with ``t`` the
  highest approximate value ever excluded, every anchor outside the candidates has exact
  similarity <= ``t + E_in + E_rel*|t|``. If the exact k-th value among the rescored
  candidates is at least that, the row is exact; otherwise (rare: the window overflowed its
  buffer) the row is recomputed in fp32. ``EngineStats`` counts such fallbacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from asif_index.errors import ConfigError, NonFiniteError, ShapeError, ZeroVectorError

Precision = Literal["auto", "fp32", "bf16", "fp16"]

_UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11}
# "auto" on CPU: bf16 selection pays off only with many anchors and a small k/N (measured in
# benchmarks/topk.py on a 2-core AMX CPU: bf16/fp32 speed 1.06-4.06 for N >= 1e5 and
# k/N <= 1%; 0.86-0.99 at k/N = 2%; 0.55-0.76 at N = 1e4 with k >= 800).
AUTO_BF16_MIN_N = 50_000
AUTO_BF16_MAX_K_FRACTION = 0.01
_TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available; use 'cpu'")
    return dev


def validate_rows(x: np.ndarray | torch.Tensor, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 [n, d] array or raise a precise error."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D array [n, d]; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ShapeError(f"{name} must hold floats; got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise ShapeError(
            f"{name} has dimension {arr.shape[1]} but the anchors have dimension {dim}: "
            "embed it with the same encoder as the anchors of that modality"
        )
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


@dataclass
class EngineStats:
    """Counters of the last ``search`` call (and running totals)."""

    rows: int = 0
    fallback_rows: int = 0
    candidates_mean: float = 0.0


class TopKEngine:
    """Top-k cosine similarities of queries against a fixed anchor matrix.

    Args:
        anchors: float32 [N, d] anchor embeddings (normalised here).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` for automatic.
        precision: ``"auto"`` picks bf16 on CPUs with hardware bf16, fp16 on CUDA, else fp32.
        memory_budget_mb: bound on the similarity block and candidate buffers; sets block
            sizes. The anchor matrix itself is resident and counted separately.
        query_block / anchor_block: explicit block sizes (override the budget).
    """

    def __init__(
        self,
        anchors: np.ndarray | torch.Tensor,
        *,
        device: str | torch.device | None = None,
        precision: Precision = "auto",
        memory_budget_mb: float = 512.0,
        query_block: int | None = None,
        anchor_block: int | None = None,
    ) -> None:
        a = l2_normalize(validate_rows(anchors, "anchors"), "anchors")
        if a.shape[0] == 0:
            raise ShapeError("anchors is empty; add anchor pairs first")
        self.device = resolve_device(device)
        self.n, self.dim = a.shape
        self._auto = precision == "auto"
        self.precision = self._resolve_precision(precision)
        self.memory_budget_mb = float(memory_budget_mb)
        self._query_block = query_block
        self._anchor_block = anchor_block
        self.stats = EngineStats()
        self._a32_np = a
        self._a32 = torch.from_numpy(a).to(self.device)
        if self.precision != "fp32":
            self._alp = self._a32.to(_TORCH_DTYPE[self.precision]).contiguous()
            resid = (self._a32 - self._alp.float()).norm(dim=1)
            self._a_resid_max = float(resid.max())
            self._a_norm_max = float(self._a32.norm(dim=1).max())
        else:
            self._alp = None

    # ----------------------------------------------------------------- configuration
    def _resolve_precision(self, precision: str) -> str:
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16; got '{precision}'")
        if precision == "auto":
            if self.device.type == "cuda":
                return "fp16"
            return "bf16" if cpu_has_fast_bf16() and self.n >= AUTO_BF16_MIN_N else "fp32"
        if precision == "fp16" and self.device.type == "cpu":
            raise ConfigError("fp16 is for CUDA; on CPU use bf16 (hardware bf16) or fp32")
        return precision

    def _blocks(self, b: int) -> tuple[int, int]:
        elt = 4 if self.precision == "fp32" else 2
        if self.device.type == "cpu":
            # Measured best on a 2-core AMX CPU: similarity blocks of about 4-8 MB stay in
            # cache while the compiled scan reads them.
            qb = self._query_block or min(b, 512)
            ab = self._anchor_block or max(4096, (8 << 20) // (qb * elt))
        else:
            budget = self.memory_budget_mb * 2**20 / 3
            qb = self._query_block or min(b, 4096)
            ab = self._anchor_block or max(1024, int(budget // (qb * (elt + 8))))
        return max(1, qb), max(1, min(ab, self.n))

    # ----------------------------------------------------------------------- search
    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k cosine similarities.

        Args:
            queries: float [B, d] (normalised here).
            k: results per row; capped at N.

        Returns:
            values float32 [B, k'] sorted descending, rows int64 [B, k'] (anchor row
            positions), with ``k' = min(k, N)``.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer; got {k!r}")
        q = l2_normalize(validate_rows(queries, "queries", self.dim), "queries")
        k = int(min(k, self.n))
        b = q.shape[0]
        out_v = np.empty((b, k), np.float32)
        out_i = np.empty((b, k), np.int64)
        self.stats = EngineStats(rows=b)
        if b == 0:
            return out_v, out_i
        # Candidate buffers dominate memory for huge batches: process in chunks.
        chunk = max(1, int(self.memory_budget_mb * 2**20 // (max(4 * k, 256) * 12 * 2)))
        for s in range(0, b, chunk):
            sl = slice(s, min(b, s + chunk))
            if self.device.type == "cpu":
                self._search_cpu(q[sl], k, out_v[sl], out_i[sl])
            else:
                self._search_torch(q[sl], k, out_v[sl], out_i[sl])
        return out_v, out_i

    # CPU: torch GEMM (oneDNN/AMX) + numba scans ------------------------------------
    def _search_cpu(self, q: np.ndarray, k: int, out_v: np.ndarray, out_i: np.ndarray) -> None:
        from asif_index import _cpu_kernels as kern

        b = q.shape[0]
        cap = max(4 * k, 256)
        qb, ab = self._blocks(b)
        large_k = self._auto and k > AUTO_BF16_MAX_K_FRACTION * self.n
        if self.precision == "fp32" or large_k:
            self._scan_fp32(q, k, cap, qb, ab, out_v, out_i)
            self._record(b, np.zeros(b), np.ones(b, bool))
            return
        u = _UNIT_ROUNDOFF[self.precision]
        qt = torch.from_numpy(q)
        qlp = qt.to(torch.bfloat16)
        e_in = self._input_error(qt, qlp).numpy().astype(np.float32)
        e_rel = np.float32(2 * u / (1 - 2 * u))
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
        self._record(b, cnt, ok)
        bad = np.flatnonzero(~ok)
        if bad.size:
            fv = np.empty((bad.size, k), np.float32)
            fi = np.empty((bad.size, k), np.int64)
            self._scan_fp32(q[bad], k, cap, qb, ab, fv, fi)
            out_v[bad] = fv
            out_i[bad] = fi

    def _scan_fp32(self, q, k, cap, qb, ab, out_v, out_i) -> None:
        from asif_index import _cpu_kernels as kern

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

    def _input_error(self, q32: torch.Tensor, qlp: torch.Tensor) -> torch.Tensor:
        dq = (q32 - qlp.float()).norm(dim=1)
        qn = q32.norm(dim=1)
        g = self.dim * 2.0**-24 / (1 - self.dim * 2.0**-24)
        amax = self._a_norm_max + self._a_resid_max
        return (
            qn * self._a_resid_max
            + dq * self._a_norm_max
            + dq * self._a_resid_max
            + g * (qn + dq) * amax
        )

    def _record(self, b: int, cnt: np.ndarray, ok: np.ndarray) -> None:
        self.stats.fallback_rows = int((~ok).sum())
        self.stats.candidates_mean = float(cnt.mean()) if b else 0.0

    # CUDA (and any torch device): dense top-k merges ------------------------------
    def _search_torch(self, q: np.ndarray, k: int, out_v: np.ndarray, out_i: np.ndarray) -> None:
        dev = self.device
        qt = torch.from_numpy(q).to(dev)
        b = qt.shape[0]
        qb, ab = self._blocks(b)
        lowp = self.precision != "fp32"
        pool = min(self.n, 2 * k + 256) if lowp else k
        for qs in range(0, b, qb):
            q32 = qt[qs : qs + qb]
            qm = q32.to(self._alp.dtype) if lowp else q32
            amat = self._alp if lowp else self._a32
            pv = pi = None
            for s in range(0, self.n, ab):
                sim = (qm @ amat[s : s + ab].t()).float()
                v, i = torch.topk(sim, min(pool, sim.shape[1]), dim=1)
                i = i + s
                if pv is not None:
                    v = torch.cat([pv, v], 1)
                    i = torch.cat([pi, i], 1)
                    v, j = torch.topk(v, min(pool, v.shape[1]), dim=1)
                    i = i.gather(1, j)
                pv, pi = v, i
            if lowp:
                exact = torch.bmm(self._a32[pi], q32[:, :, None]).squeeze(2)
                ev, j = torch.topk(exact, k, dim=1)
                ei = pi.gather(1, j)
                u = _UNIT_ROUNDOFF[self.precision]
                e_rel = 2 * u / (1 - 2 * u)
                e_in = self._input_error(q32, qm)
                t = pv[:, -1]
                full = pv.shape[1] >= self.n
                ok = full | (ev[:, -1] >= t + e_in + e_rel * t.abs())
                bad = (~ok).nonzero().flatten()
                if bad.numel():
                    sim = q32[bad] @ self._a32.t()
                    fv, fi = torch.topk(sim, k, dim=1)
                    ev[bad], ei[bad] = fv, fi
                self.stats.fallback_rows += int(bad.numel())
            else:
                ev, ei = pv, pi
            # Stable order: descending value, ascending row on ties.
            ei_sorted, order = torch.sort(ei, dim=1)
            ev_sorted = ev.gather(1, order)
            ev2, order2 = torch.sort(ev_sorted, dim=1, descending=True, stable=True)
            out_v[qs : qs + qb] = ev2.cpu().numpy()
            out_i[qs : qs + qb] = ei_sorted.gather(1, order2).cpu().numpy()

    @property
    def resident_bytes(self) -> int:
        """Bytes of the resident anchor matrices (fp32 plus the half-precision copy)."""
        extra = self._alp.numel() * self._alp.element_size() if self._alp is not None else 0
        return self._a32.numel() * 4 + extra


def exact_topk_reference(queries: np.ndarray, anchors: np.ndarray, k: int):
    """Dense numpy reference (float64): the yardstick the engine is tested against."""
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    a = anchors.astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    sims = q @ a.T
    k = min(k, a.shape[0])
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, 1), idx
