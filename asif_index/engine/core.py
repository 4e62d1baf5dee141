"""The top-k engine: exact top-k cosine similarities of queries against a fixed anchor matrix,
on the CPU (numba scans over BLAS/AMX blocks) or a GPU (a fused Triton kernel), with one
contract: every returned top-k is the fp32 top-k, ties going to the lowest anchor row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from asif_index.engine.cpu import CpuKernel, cpu_has_fast_bf16
from asif_index.engine.cuda import Tiles, TorchKernel, TritonKernel, triton_available
from asif_index.engine.inputs import (
    l2_normalize,
    resolve_device,
    validate_rows,
    validate_normalize_tensor,
)
from asif_index.errors import ConfigError, ShapeError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Kernel = Literal["auto", "cpu", "triton", "torch"]
AUTO_BF16_MIN_N = 50_000


@dataclass
class EngineStats:
    """Counters of the last ``search`` call.

    ``fallback_rows``: rows whose half-precision selection could not be certified and were
    recomputed in fp32 (results stay exact; a high count only costs time)."""

    rows: int = 0
    fallback_rows: int = 0
    candidates_mean: float = 0.0
    kernel: str = ""


class TopKEngine:
    """Top-k cosine similarities of queries against a fixed anchor matrix.

    Args:
        anchors: float [N, d] anchor embeddings (numpy or torch; normalised here).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` for automatic.
        precision: selection precision. ``"auto"``: fp16 on CUDA, bf16 on CPUs with hardware
            bf16 and many anchors, else fp32. Results are exact fp32 in every case.
        kernel: ``"auto"`` (CPU: ``cpu``; CUDA: ``triton``, or ``torch`` without Triton),
            ``"triton"`` (the fused kernel; on a CPU only with ``TRITON_INTERPRET=1``, for
            tests), ``"torch"`` (exact fp32 blocks on any torch device), ``"cpu"``.
        memory_budget_mb: bound on the transient buffers of one search, honoured for any batch
            size by processing queries in chunks. The resident anchor matrices are separate
            (:attr:`resident_bytes`).
        query_block / anchor_block: explicit CPU / torch block sizes (override the budget).
        tiles: tile shape of the Triton kernel (default by batch size).
    """

    def __init__(
        self,
        anchors: np.ndarray | torch.Tensor,
        *,
        device: str | torch.device | None = None,
        precision: Precision = "auto",
        kernel: Kernel = "auto",
        memory_budget_mb: float = 512.0,
        query_block: int | None = None,
        anchor_block: int | None = None,
        tiles: Tiles | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if isinstance(anchors, torch.Tensor):
            a_t = validate_normalize_tensor(anchors, "anchors", None, self.device)
            a = None
        else:
            a = l2_normalize(validate_rows(anchors, "anchors"), "anchors").astype(np.float32)
            a_t = None
        self.n, self.dim = (a_t.shape if a_t is not None else a.shape)
        if self.n == 0:
            raise ShapeError("anchors is empty; add anchor pairs first")
        if not memory_budget_mb > 0:
            raise ConfigError(f"memory_budget_mb must be positive; got {memory_budget_mb!r}")
        self.memory_budget_mb = float(memory_budget_mb)
        self.kernel_name = self._resolve_kernel(kernel)
        self.precision = self._resolve_precision(precision)
        self.stats = EngineStats(kernel=self.kernel_name)
        if self.kernel_name == "cpu":
            a = a if a is not None else a_t.cpu().numpy()
            self._kernel = CpuKernel(np.ascontiguousarray(a), self.precision, precision == "auto",
                                     query_block, anchor_block)
        else:
            a_t = a_t if a_t is not None else torch.from_numpy(a).to(self.device)
            if self.kernel_name == "triton":
                self._kernel = TritonKernel(a_t, self.memory_budget_mb, tiles=tiles)
            else:
                self._kernel = TorchKernel(a_t, self.memory_budget_mb, query_block, anchor_block)

    # ----------------------------------------------------------------- configuration
    def _resolve_kernel(self, kernel: str) -> str:
        if kernel not in ("auto", "cpu", "triton", "torch"):
            raise ConfigError(f"kernel must be auto, cpu, triton or torch; got '{kernel}'")
        if kernel == "auto":
            if self.device.type == "cpu":
                return "cpu"
            return "triton" if triton_available(self.device) is None else "torch"
        if kernel == "cpu" and self.device.type != "cpu":
            raise ConfigError(f"kernel 'cpu' runs on the CPU; device is '{self.device}'")
        if kernel == "triton":
            why = triton_available(self.device)
            if why:
                raise ConfigError(f"kernel 'triton' cannot run here: {why}; use kernel='auto'")
        return kernel

    def _resolve_precision(self, precision: str) -> str:
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16; got '{precision}'")
        if self.kernel_name == "triton":
            if precision not in ("auto", "fp16"):
                raise ConfigError(f"the Triton kernel selects in fp16 (exact results either "
                                  f"way); precision '{precision}' needs kernel='torch'")
            return "fp16"
        if self.kernel_name == "torch":
            if precision not in ("auto", "fp32"):
                raise ConfigError(f"the torch kernel is exact fp32; precision '{precision}' "
                                  "needs kernel='triton' (fp16) or the CPU kernel (bf16)")
            return "fp32"
        if precision == "auto":
            return "bf16" if cpu_has_fast_bf16() and self.n >= AUTO_BF16_MIN_N else "fp32"
        if precision == "fp16":
            raise ConfigError("fp16 is for CUDA; on CPU use bf16 (hardware bf16) or fp32")
        return precision

    @property
    def resident_bytes(self) -> int:
        """Bytes of the resident anchor matrices (fp32 plus any half-precision copies)."""
        return self._kernel.resident_bytes

    # ----------------------------------------------------------------------- search
    def search(self, queries: np.ndarray | torch.Tensor, k: int):
        """Exact top-k cosine similarities.

        Args:
            queries: float [B, d] (normalised here), numpy or torch. A torch tensor stays on
                the device: the results come back as torch tensors on the engine's device.
            k: results per row; capped at N.

        Returns:
            values float32 [B, k'] sorted descending, rows int64 [B, k'] (anchor row
            positions; among values equal to the k-th, the lowest rows), ``k' = min(k, N)``.
            numpy arrays for numpy input, tensors for tensor input.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer; got {k!r}")
        k = int(min(k, self.n))
        as_tensor = isinstance(queries, torch.Tensor)
        if self.kernel_name == "cpu":
            q = l2_normalize(validate_rows(queries, "queries", self.dim), "queries")
            v, i = self._search_cpu(q, k)
            if as_tensor:
                return torch.from_numpy(v).to(queries.device), torch.from_numpy(i).to(queries.device)
            return v, i
        if not as_tensor:
            queries = torch.from_numpy(validate_rows(queries, "queries", self.dim))
        qt = validate_normalize_tensor(queries, "queries", self.dim, self.device)
        v, i = self._search_device(qt, k)
        if as_tensor:
            return v, i
        return v.cpu().numpy(), i.cpu().numpy()

    def _search_cpu(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        b = q.shape[0]
        out_v = np.empty((b, k), np.float32)
        out_i = np.empty((b, k), np.int64)
        self.stats = EngineStats(rows=b, kernel="cpu")
        if b == 0:
            return out_v, out_i
        # Candidate buffers dominate memory for huge batches: process in chunks.
        chunk = max(1, int(self.memory_budget_mb * 2**20 // (max(4 * k, 256) * 12 * 2)))
        cands, fails = 0.0, 0
        for s in range(0, b, chunk):
            sl = slice(s, min(b, s + chunk))
            cnt, ok = self._kernel.search(q[sl], k, out_v[sl], out_i[sl])
            cands += float(np.sum(cnt))
            fails += int((~ok).sum())
        self.stats.fallback_rows, self.stats.candidates_mean = fails, cands / b
        return out_v, out_i

    def _search_device(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = q.shape[0]
        self.stats = EngineStats(rows=b, kernel=self.kernel_name)
        if b == 0:
            return (torch.empty((0, k), dtype=torch.float32, device=self.device),
                    torch.empty((0, k), dtype=torch.int64, device=self.device))
        if self.kernel_name == "triton":
            v, i, n_bad, cand_sum = self._kernel.search(q, k)
            self.stats.fallback_rows, self.stats.candidates_mean = n_bad, cand_sum / b
            return v, i
        return self._kernel.search(q, k)


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
