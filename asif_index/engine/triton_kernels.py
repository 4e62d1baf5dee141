"""Triton kernels of the CUDA engine: fused similarity + threshold selection, and exact rescoring.

Imported only when the Triton path runs (CUDA, or ``TRITON_INTERPRET=1`` on the CPU for tests:
the interpreter reads that variable when this module is imported, so it must be set first).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def select_candidates(
    q_ptr, a_ptr, tau_ptr, cnt_ptr, buf_ptr,
    B, N, D, CAP,
    stride_q, stride_a,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, EPILOGUE: tl.constexpr,
):
    """One [BLOCK_M queries x BLOCK_N anchors] tile of half-precision similarities (fp32
    accumulation), kept in registers: entries >= the row's threshold ``tau`` are appended to the
    row's candidate buffer (anchor row numbers, int32 [B, CAP]); ``cnt`` (int32 [B]) counts them,
    and may exceed CAP, which marks the row as overflowed. The B x N matrix is never written.

    EVEN_K: D is a multiple of BLOCK_K (no mask on the reduction axis). EPILOGUE: 0 = one
    atomic per row and a prefix sum places the tile's entries; 1 = one atomic per kept entry
    (no scan, no layout change of the accumulator); 2 = count only, nothing stored (for
    measuring the main loop alone).
    """
    pid = tl.program_id(0)
    n_m = tl.cdiv(B, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: consecutive programs share anchor tiles, so a tile read from memory is
    # reused from L2 by GROUP_M query blocks instead of being re-read for every one.
    per_group = GROUP_M * n_n
    group = pid // per_group
    first_m = group * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < B
    col_ok = cols < N
    # Edge tiles read wrapped-around rows instead of masking them (their results are dropped
    # by row_ok / col_ok below): unmasked loads keep the main loop's copies wide.
    rows_ld = rows % B
    cols_ld = cols % N
    # int64 offsets: N x d passes 2^31 at 10^7 anchors of dimension 768
    q_ptrs = q_ptr + rows_ld[:, None] * stride_q + ks[None, :]
    a_ptrs = a_ptr + cols_ld.to(tl.int64)[None, :] * stride_a + ks[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        if EVEN_K:
            q = tl.load(q_ptrs)
            a = tl.load(a_ptrs)
        else:
            k_ok = (k0 + ks) < D
            q = tl.load(q_ptrs, mask=k_ok[None, :], other=0.0)
            a = tl.load(a_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(q, a, acc, out_dtype=tl.float32)
        q_ptrs += BLOCK_K
        a_ptrs += BLOCK_K
    tau = tl.load(tau_ptr + rows, mask=row_ok, other=float("inf"))
    keep = (acc >= tau[:, None]) & col_ok[None, :] & row_ok[:, None]
    if EPILOGUE == 0:
        keep_i = keep.to(tl.int32)
        n_keep = tl.sum(keep_i, axis=1)
        # One atomic per row reserves a slot range; a prefix sum places the entries in it.
        base = tl.atomic_add(cnt_ptr + rows, n_keep, mask=row_ok & (n_keep > 0))
        pos = base[:, None] + tl.cumsum(keep_i, axis=1) - 1
        tl.store(buf_ptr + rows[:, None] * CAP + pos,
                 cols[None, :].broadcast_to(BLOCK_M, BLOCK_N), mask=keep & (pos < CAP))
    elif EPILOGUE == 1:
        # Few entries pass (about 2k of N per row): one predicated atomic per kept entry is
        # cheaper than a scan across the tile, which moves the accumulator between layouts.
        ones = tl.full((BLOCK_M, BLOCK_N), 1, tl.int32)
        pos = tl.atomic_add(cnt_ptr + rows[:, None].broadcast_to(BLOCK_M, BLOCK_N), ones,
                            mask=keep)
        tl.store(buf_ptr + rows[:, None] * CAP + pos,
                 cols[None, :].broadcast_to(BLOCK_M, BLOCK_N), mask=keep & (pos < CAP))
    else:
        n_keep = tl.sum(keep.to(tl.int32), axis=1)
        tl.atomic_add(cnt_ptr + rows, n_keep, mask=row_ok & (n_keep > 0))


@triton.jit
def rescore_candidates(
    q_ptr, a_ptr, buf_ptr, cnt_ptr, out_ptr,
    D, CAP,
    stride_q, stride_a, W,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Exact fp32 similarity of each candidate: out[r, j] = q32[r] . a32[buf[r, j]] for
    j < min(cnt[r], CAP), -inf elsewhere; ``out`` is float32 [B, W] (W <= CAP: the widest
    row's count). Grid: (B, cdiv(W, BLOCK_C))."""
    r = tl.program_id(0)
    slots = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.minimum(tl.load(cnt_ptr + r), CAP)
    ok = slots < n
    ids = tl.load(buf_ptr + r * CAP + slots, mask=ok, other=0).to(tl.int64)
    ds = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + ds) < D
        q = tl.load(q_ptr + r * stride_q + d0 + ds, mask=d_ok, other=0.0)
        a = tl.load(a_ptr + ids[:, None] * stride_a + (d0 + ds)[None, :],
                    mask=ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(a * q[None, :], axis=1)
    acc = tl.where(ok, acc, float("-inf"))
    tl.store(out_ptr + r * W + slots, acc, mask=slots < W)
