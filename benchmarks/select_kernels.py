"""Where a GPU search's time goes, stage by stage, and the fused selection kernel's variants.

    python -m benchmarks.select_kernels                 # N=1e6 d=768 k=800, B=1 and 1024

For one chunk of queries (1024 rows is about what the engine's default memory budget puts in
one chunk at N=1e6): the threshold from the sample, the fused selection kernel under each tile
shape and epilogue (``scan``, ``atomic``, and ``count``, which stores nothing and so times the
main loop alone), cuBLAS's fp16 GEMM of the same shape (the arithmetic peer), the fp32
rescoring and the final top-k. Each variant's candidates are checked equal to the default's
(same count and set per row). Times are medians of CUDA-event timings
(``triton.testing.do_bench``); TFLOP/s counts 2 N d per query.
"""

from __future__ import annotations

import argparse

import torch

from asif_index.engine import Tiles, TopKEngine
from benchmarks.common import machine, table, write_json

BATCH_SHAPES = [(128, 128, 64, 8, 8, 3), (128, 64, 64, 8, 4, 4), (128, 128, 32, 8, 4, 5),
                (256, 128, 64, 8, 8, 3), (128, 256, 64, 8, 8, 3), (64, 128, 64, 8, 4, 4)]
SINGLE_SHAPES = [(16, 128, 64, 1, 4, 4), (16, 256, 64, 1, 4, 4), (16, 64, 128, 1, 4, 4),
                 (16, 256, 128, 1, 8, 3)]


def bench(fn) -> float:
    """Median milliseconds of ``fn`` on the device (one timed run on the CPU, where this only
    checks the benchmark itself under TRITON_INTERPRET=1)."""
    if not torch.cuda.is_available():
        import time

        t = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))


def same_candidates(c1, b1, c2, b2, cap: int) -> bool:
    if not torch.equal(c1, c2):
        return False
    w = int(c1.clamp(max=cap).max())
    mask = torch.arange(w, device=b1.device)[None, :] < c1.clamp(max=cap)[:, None]
    s1 = torch.where(mask, b1[:, :w], -1).sort(dim=1).values
    s2 = torch.where(mask, b2[:, :w], -1).sort(dim=1).values
    return bool(torch.equal(s1, s2))


def run(n: int, d: int, k: int, batches: list[int], out: str, device: str = "cuda") -> dict:
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(2)
    a = torch.randn(n, d, device=dev, generator=gen)
    a /= a.norm(dim=1, keepdim=True)
    eng = TopKEngine(a, device=dev, kernel="triton")
    kern = eng._kernel
    del a
    plan = kern.plan(k)
    rows = []

    def add(b, stage, ms, flops=None, **extra):
        row = {"batch": b, "stage": stage, "ms": ms,
               "TFLOP/s": flops / ms / 1e9 if flops else None, **extra}
        rows.append(row)
        print(table([row], list(row)), flush=True)

    for b in batches:
        q = torch.randn(b, d, device=dev, generator=gen)
        q /= q.norm(dim=1, keepdim=True)
        flops = 2.0 * b * n * d
        add(b, "whole search (engine default)", bench(lambda: eng.search(q, k)),
            fallback=eng.stats.fallback_rows, candidates=eng.stats.candidates_mean)
        add(b, "threshold (sample GEMM + top-rank)", bench(lambda: kern.threshold(q, plan)))
        q16, tau, _ = kern.threshold(q, plan)
        add(b, "cuBLAS fp16 GEMM (same shape, output written)",
            bench(lambda: q16 @ kern.a16.t()), flops)
        ref_c, ref_b = kern.select(q16, tau, plan.cap)
        for shape in SINGLE_SHAPES if b <= 16 else BATCH_SHAPES:
            for epi in ("scan", "atomic", "count"):
                t = Tiles(*shape, epilogue=epi)
                try:
                    ms = bench(lambda: kern.select(q16, tau, plan.cap, t))
                    c, buf = kern.select(q16, tau, plan.cap, t)
                except Exception as exc:  # a shape the compiler refuses: report, go on
                    print(f"select {shape} {epi}: {type(exc).__name__}: {str(exc)[:300]}",
                          flush=True)
                    continue
                same = (torch.equal(c, ref_c) if epi == "count"
                        else same_candidates(c, buf, ref_c, ref_b, plan.cap))
                add(b, f"select {'x'.join(map(str, shape))} {epi}", ms, flops, same=same)
        width = max(int(ref_c.clamp(max=plan.cap).max()), 1)

        def rescore():
            import triton

            from asif_index.engine import triton_kernels as tk

            ex = torch.empty((b, width), dtype=torch.float32, device=dev)
            tk.rescore_candidates[(b, triton.cdiv(width, 64))](
                q, kern.a32, ref_b, ref_c, ex, d, plan.cap, q.stride(0), kern.a32.stride(0),
                width, BLOCK_C=64, BLOCK_D=64)
            return ex

        add(b, f"rescore fp32 ({width} slots)", bench(rescore))
        from asif_index.engine.cuda import _sorted_top, pack_keys

        ex = rescore()
        keys = pack_keys(ex, ref_b[:, :width].clamp(min=0))
        add(b, "final top-k of the keys", bench(lambda: _sorted_top(keys, k)))
    res = {"question": "GPU search stages and fused-kernel variants", "machine": machine(),
           "N": n, "d": d, "k": k, "plan": vars(plan), "rows": rows,
           "markdown": table(rows, ["batch", "stage", "ms", "TFLOP/s", "same"])}
    print("\n" + res["markdown"], flush=True)
    write_json(res, out)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--batch", default="1,1024")
    ap.add_argument("--out", default="runs/bench/select_kernels.json")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.select_kernels times CUDA kernels; no CUDA device here")
    run(a.n, a.d, a.k, [int(x) for x in a.batch.split(",")], a.out)


if __name__ == "__main__":
    main()
