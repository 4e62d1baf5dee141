"""GPU kernels: the fused Triton selection (fp16 similarities never written as a B x N
matrix, candidates rescored in fp32 and certified) and an exact fp32 torch path for any torch
device (and for the rows the fused path cannot certify).

Ties: every path orders by (value descending, anchor row ascending), so among anchors equal
to the k-th value the lowest rows are kept, as in the CPU kernel. Values and rows are packed
into one int64 key so that one ``torch.topk`` applies that rule.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

import torch

from asif_index.engine import bounds
from asif_index.errors import ConfigError

_LOW32 = 0xFFFFFFFF
SMALL_BATCH = 64  # rows up to which a search avoids the host sync on the candidate count


def pack_keys(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like (value descending, row ascending): the float's bits mapped to
    an order-preserving int32 in the high half, the complemented row in the low half."""
    bits = (values.float() + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key.to(torch.int64) << 32) + (_LOW32 - rows.to(torch.int64))


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi = (keys >> 32).to(torch.int32)
    bits = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), _LOW32 - (keys & _LOW32)


def _sorted_top(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return unpack_keys(torch.topk(keys, min(k, keys.shape[1]), dim=1, sorted=True).values)


class TorchKernel:
    """Exact fp32 top-k on any torch device: blocks of anchors, one running top-k per row.

    Memory: ``query_block x anchor_block`` similarities (plus their keys) at a time."""

    name = "torch"

    def __init__(self, a32: torch.Tensor, memory_budget_mb: float,
                 query_block: int | None = None, anchor_block: int | None = None) -> None:
        self.a32 = a32
        self.n, self.dim = a32.shape
        self.budget = memory_budget_mb * 2**20
        self._qb, self._ab = query_block, anchor_block

    @property
    def resident_bytes(self) -> int:
        return self.a32.numel() * 4

    def search(self, q32: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """q32: unit float32 [b, d] on the device -> (values float32 [b, k], rows int64 [b, k])."""
        b = q32.shape[0]
        qb = self._qb or max(1, min(b, 4096))
        # per similarity: 4 (fp32) + 8 (key) + 8 (topk output of the merge)
        ab = self._ab or max(k + 1, int(self.budget // (qb * 20)))
        ab = min(ab, self.n)
        out_v = torch.empty((b, k), dtype=torch.float32, device=q32.device)
        out_i = torch.empty((b, k), dtype=torch.int64, device=q32.device)
        for qs in range(0, b, qb):
            q = q32[qs:qs + qb]
            best = None
            for s in range(0, self.n, ab):
                sim = q @ self.a32[s:s + ab].t()
                rows = torch.arange(s, s + sim.shape[1], device=q.device).expand_as(sim)
                keys = pack_keys(sim, rows)
                if best is not None:
                    keys = torch.cat([best, keys], dim=1)
                best = torch.topk(keys, min(k, keys.shape[1]), dim=1, sorted=False).values
            v, i = _sorted_top(best, k)
            out_v[qs:qs + qb], out_i[qs:qs + qb] = v, i
        return out_v, out_i


@dataclass(frozen=True)
class Tiles:
    """Tile shape of the fused kernel (see :func:`default_tiles`)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    epilogue: str = "scan"  # "scan": an atomic per row + prefix sum; "atomic": one per entry

    def __post_init__(self) -> None:
        if self.epilogue not in EPILOGUES:
            raise ConfigError(f"Tiles.epilogue must be one of {sorted(EPILOGUES)}; "
                             f"got '{self.epilogue}'")


EPILOGUES = {"scan": 0, "atomic": 1, "count": 2}  # "count": benchmarks only, stores nothing


def default_tiles(b: int) -> Tiles:
    # A single query is bound by reading the anchors once: narrow query tiles, wide anchor
    # tiles. Batches are bound by the product and by the epilogue that places candidates,
    # which costs as much as the main loop at 128 x 128 (benchmarks.select_kernels on an
    # H200, N=1e6 d=768 B=1024: 7.1 ms at 128x128 against 5.4 ms at 128x64, main loop alone
    # 3.1 and 4.2 ms): narrower anchor tiles make the scan cheaper than the product loses.
    if b <= 16:
        return Tiles(16, 256, 64, group_m=1, num_warps=4, num_stages=4)
    if b <= 64:
        return Tiles(64, 128, 64, group_m=8, num_warps=4, num_stages=4)
    return Tiles(128, 64, 64, group_m=8, num_warps=4, num_stages=4)


@dataclass
class Plan:
    sample: int  # anchors in the threshold sample (0: every anchor is a candidate)
    rank: int  # the threshold is the rank-th largest sample similarity
    cap: int  # candidate slots per row


class TritonKernel:
    """Fused fp16 similarity + threshold selection (Triton), fp32 rescoring, certificate.

    Per row, a threshold ``tau`` is the ``rank``-th largest fp16 similarity over a fixed
    random sample of anchors, sized so that about ``oversample * k`` anchors pass it; the
    kernel appends every anchor whose fp32-accumulated fp16 similarity reaches ``tau`` to the
    row's buffer (``cap`` slots), without writing the similarities. Candidates are rescored in
    fp32 and the top-k taken from them. The row is exact when the buffer did not overflow,
    it holds at least k candidates and the k-th exact value reaches ``tau + E_in``
    (:mod:`asif_index.engine.bounds`; the accumulator is compared in fp32, so ``E_rel = 0``);
    other rows are recomputed by :class:`TorchKernel` and counted.

    Args:
        a32: unit float32 [N, d] anchors on the device (kept resident for rescoring, with an
            fp16 copy for selection and the fp16 sample).
        memory_budget_mb: bound on per-search buffers; queries are processed in chunks.
        oversample: expected candidates per row over k (more: fewer uncertified rows, more
            rescoring).
        sample_rank: rank of the threshold in the sample (larger: a steadier threshold, a
            larger sample).
    """

    name = "triton"

    def __init__(self, a32: torch.Tensor, memory_budget_mb: float, *, oversample: float = 2.0,
                 sample_rank: int = 128, seed: int = 0, tiles: Tiles | None = None) -> None:
        from asif_index.engine import triton_kernels  # noqa: F401  (fails early if unusable)

        self.a32 = a32.contiguous()
        self.n, self.dim = a32.shape
        self.a16 = self.a32.half().contiguous()
        self.a_norm_max, self.a_resid_max = bounds.residual_stats(self.a32, self.a16)
        self.g = bounds.accumulation_factor(self.dim, tensor_cores=a32.device.type == "cuda")
        self.budget = memory_budget_mb * 2**20
        self.oversample, self.sample_rank = float(oversample), int(sample_rank)
        self.fallback = TorchKernel(self.a32, memory_budget_mb)
        gen = torch.Generator().manual_seed(seed)
        self._perm = torch.randperm(self.n, generator=gen).to(a32.device)
        self._samples: dict[int, torch.Tensor] = {}
        # Small batches on CUDA replay a captured graph: one query's device work is ~0.6 ms
        # at 10^6 x 768, and launching its ~40 kernels one by one from Python doubles that.
        self.use_graphs = a32.device.type == "cuda"
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self._graph_lock = threading.Lock()
        self._graph_failed: str | None = None
        self.tiles = tiles

    @property
    def tiles(self) -> Tiles | None:
        return self._tiles

    @tiles.setter
    def tiles(self, value: Tiles | None) -> None:
        self._tiles = value
        self._graphs.clear()  # captured launches hold the old shape

    @property
    def resident_bytes(self) -> int:
        return self.a32.numel() * 6 + sum(s.numel() * 2 for s in self._samples.values())

    def plan(self, k: int) -> Plan:
        want = self.oversample * k
        if 2 * want >= self.n:  # most anchors pass anyway: take them all, nothing to certify
            return Plan(0, 0, self.n)
        # at most a quarter of the anchors in the sample: the selection pass stays the cost
        sample = min(self.n // 4, max(self.sample_rank, math.ceil(self.sample_rank * self.n / want)))
        rank = max(1, min(sample, round(want * sample / self.n)))
        # small k: the count above a low-rank threshold has a long tail, so never under 256
        cap = min(self.n, max(256, 1 << math.ceil(math.log2(2.5 * want))))
        return Plan(sample, rank, cap)

    def _sample(self, size: int) -> torch.Tensor:
        if size not in self._samples:
            self._samples.clear()  # one k at a time in practice; do not accumulate copies
            self._graphs.clear()  # they read the sample they were captured with
            self._samples[size] = self.a16[self._perm[:size]].contiguous()
        return self._samples[size]

    def search(self, q32: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """q32: unit float32 [b, d] on the device -> (values [b, k], rows [b, k], rows that
        were recomputed in fp32, candidates summed over the rows)."""
        plan = self.plan(k)
        b = q32.shape[0]
        per_row = plan.cap * (4 + 4 + 8 + 8) + plan.sample * (2 + 2) + 64
        chunk = max(1, int(self.budget // per_row))
        if self.use_graphs and b <= min(SMALL_BATCH, chunk) and self._graph_failed is None:
            out = self._search_graph(q32, k, plan)
            if out is not None:
                return out
        outs = [self._search_chunk(q32[s:s + chunk], k, plan) for s in range(0, b, chunk)]
        if len(outs) == 1:
            return outs[0]
        return (torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]),
                sum(o[2] for o in outs), sum(o[3] for o in outs))

    def threshold(self, q32: torch.Tensor, plan: Plan):
        """(q16 [b, d], tau [b], E_in [b]): each row's selection threshold from the sample."""
        b = q32.shape[0]
        q16 = q32.half()
        if plan.sample:
            sims = q16 @ self._sample(plan.sample).t()
            tau = torch.topk(sims, plan.rank, dim=1, sorted=False).values.min(dim=1).values.float()
            del sims
        else:
            tau = torch.full((b,), float("-inf"), device=q32.device)
        e_in = bounds.input_error(q32, q16, self.a_norm_max, self.a_resid_max, self.g)
        # Lowered by 2 E_in, the threshold certifies itself: the `rank` sampled anchors at or
        # above it have exact values >= tau + E_in, so about oversample * k rows pass the
        # certificate's bound, not just those far above a borderline sample value.
        return q16, (tau - 2 * e_in).contiguous(), e_in

    def select(self, q16: torch.Tensor, tau: torch.Tensor, cap: int,
               tiles: Tiles | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused kernel: (cnt int32 [b], buf int32 [b, cap]) of anchors at or above tau."""
        import triton

        from asif_index.engine import triton_kernels as tk

        b, dev = q16.shape[0], q16.device
        cnt = torch.zeros(b, dtype=torch.int32, device=dev)
        buf = torch.empty((b, cap), dtype=torch.int32, device=dev)
        t = tiles or self.tiles or default_tiles(b)
        grid = (triton.cdiv(b, t.block_m) * triton.cdiv(self.n, t.block_n),)
        tk.select_candidates[grid](
            q16, self.a16, tau, cnt, buf, b, self.n, self.dim, cap,
            q16.stride(0), self.a16.stride(0),
            BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, GROUP_M=t.group_m,
            EVEN_K=self.dim % t.block_k == 0, EPILOGUE=EPILOGUES[t.epilogue],
            num_warps=t.num_warps, num_stages=t.num_stages,
        )
        return cnt, buf

    def _search_graph(self, q32, k, plan):
        """The small-batch search as one graph replay per (b, k); None if capture failed (the
        reason is kept in ``_graph_failed`` and the eager path is used from then on)."""
        key = (q32.shape[0], k)
        with self._graph_lock:  # one set of static buffers per shape: replays take turns
            cap = self._graphs.get(key)
            if cap is None:
                try:
                    cap = self._capture(q32, k, plan)
                except Exception as exc:  # a driver or library that refuses capture
                    self._graph_failed = f"{type(exc).__name__}: {exc}"
                    torch.cuda.synchronize(q32.device)
                    return None
                if len(self._graphs) >= 16:
                    self._graphs.pop(next(iter(self._graphs)))
                self._graphs[key] = cap
            cap.q.copy_(q32)
            cap.graph.replay()
            # copies: the next replay overwrites the static outputs; the counts are read (the
            # one sync) before another thread may replay
            v, i, ok = cap.v.clone(), cap.i.clone(), cap.ok.clone()
            counts = cap.counts.tolist()
        return self._certified(q32, k, v, i, ok, counts)

    def _capture(self, q32, k, plan) -> "_Captured":
        static_q = q32.clone()
        if plan.sample:
            self._sample(plan.sample)  # allocated outside the graph
        side = torch.cuda.Stream(q32.device)
        side.wait_stream(torch.cuda.current_stream(q32.device))
        with torch.cuda.stream(side):  # compiles the kernels, warms the allocator
            self._device_pass(static_q, k, plan)
        torch.cuda.current_stream(q32.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            v, i, ok, counts = self._device_pass(static_q, k, plan)
        # the sample is kept alive with the graph that reads it, even if another k replaces it
        return _Captured(graph, static_q, v, i, ok, counts, self._samples.get(plan.sample))

    def _search_chunk(self, q32, k, plan):
        v, i, ok, counts = self._device_pass(q32, k, plan)
        return self._certified(q32, k, v, i, ok, counts.tolist())

    def _certified(self, q32, k, v, i, ok, counts):
        """Rows the certificate rejected recomputed in fp32; ``counts``: [uncertified rows,
        candidates] already on the host (reading them is the search's one unavoidable sync)."""
        n_bad, cand_sum = counts
        if n_bad:
            bad = (~ok).nonzero().flatten()
            fv, fi = self.fallback.search(q32[bad], k)
            v[bad], i[bad] = fv, fi
        return v, i, int(n_bad), int(cand_sum)

    def _device_pass(self, q32, k, plan):
        """Everything up to the certificate, with no host sync for small batches:
        (values [b, k], rows [b, k], certified [b], int64 [2]: uncertified rows, candidates)."""
        import triton

        from asif_index.engine import triton_kernels as tk

        b, dev = q32.shape[0], q32.device
        q16, tau, e_in = self.threshold(q32, plan)
        cnt, buf = self.select(q16, tau, plan.cap)
        # The rescoring width: the widest row's count costs a host sync, which a small batch
        # cannot afford (a round trip is a large part of one query's latency); it scores the
        # whole buffer instead, whose empty slots cost a bounds check each.
        if b <= SMALL_BATCH:
            width = plan.cap
        else:
            width = max(int(cnt.max().clamp(max=plan.cap)), 1)
        ex = torch.empty((b, width), dtype=torch.float32, device=dev)
        block_c = 64
        tk.rescore_candidates[(b, triton.cdiv(width, block_c))](
            q32, self.a32, buf, cnt, ex, self.dim, plan.cap, q32.stride(0), self.a32.stride(0),
            width, BLOCK_C=block_c, BLOCK_D=64,
        )
        keys = pack_keys(ex, buf[:, :width].clamp(min=0))
        v, i = _sorted_top(keys, k)
        if v.shape[1] < k:  # fewer candidates than k in every row: pad, rows fail below
            pad = k - v.shape[1]
            v = torch.cat([v, v.new_full((b, pad), float("-inf"))], 1)
            i = torch.cat([i, i.new_zeros((b, pad))], 1)
        every = torch.isinf(tau) & (tau < 0)
        ok = every | ((cnt <= plan.cap) & (cnt >= k) & (v[:, k - 1] >= tau + e_in))
        return v, i, ok, torch.stack([(~ok).sum(), cnt.sum()])


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    q: torch.Tensor  # static input the replay reads
    v: torch.Tensor  # static outputs it writes
    i: torch.Tensor
    ok: torch.Tensor
    counts: torch.Tensor
    sample: torch.Tensor | None


def triton_available(device: torch.device) -> str | None:
    """None when the fused kernel can run on ``device``, else the reason it cannot."""
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not interp:
        return (f"the Triton kernel runs on CUDA (or on the CPU with TRITON_INTERPRET=1 for "
                f"tests); device is '{device}'")
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (it ships with torch's CUDA build: pip install torch)"
    return None
