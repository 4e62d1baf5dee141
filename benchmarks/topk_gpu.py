"""The top-k engine on a GPU against plain torch, in one run on one device.

    python -m benchmarks.topk --device cuda                 # N=1e5,1e6,1e7  d=384,768  k=800
    python -m benchmarks.topk --device cuda --n 1000000 --d 768 --batch 1024,8192

Columns (queries/s; inputs and outputs are device tensors, as in a GPU pipeline):
  * ``asif``: ``TopKEngine(device="cuda")`` (fused fp16 selection, fp32 rescoring, certified
    exact; ``fallback`` counts rows it had to recompute);
  * ``torch32``: fp32 matmul + ``torch.topk`` (exact), in query chunks that fit memory;
  * ``torch16``: fp16 matmul + ``torch.topk`` (approximate; ``torch16_recall`` is the share of
    the exact top-k it finds);
  * ``gemm16``: the fp16 matmul alone, and ``bound``: the q/s a measured large fp16 GEMM's
    throughput allows for N x d (``asif_of_bound`` = asif / bound);
  * ``asif_peak_MB``: peak GPU memory allocated by one engine search beyond what was resident.
Targets of issue 8 are checked at the end and printed as PASS / MISS lines.

With ``--device cpu`` (and TRITON_INTERPRET=1) the same code runs at tiny sizes under Triton's
interpreter: that checks the benchmark itself, not speed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from asif_index.engine import Tiles, TopKEngine
from benchmarks.common import machine, table, write_json


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, repeat: int) -> float:
    """Best wall time of ``repeat`` runs after a warm-up."""
    fn()
    _sync(dev)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def gemm_tflops(dev: torch.device, size: int) -> float:
    x = torch.randn(size, size, device=dev, dtype=torch.float16)
    y = torch.randn(size, size, device=dev, dtype=torch.float16)
    t = timed(lambda: x @ y, dev, 5)
    return 2 * size**3 / t / 1e12


def chunk_rows(n: int, elt_bytes: int, budget: float) -> int:
    return max(1, int(budget // (n * elt_bytes)))


def torch_topk(q, a, k, budget):
    """Plain torch: matmul + topk over all anchors, queries chunked to fit ``budget`` bytes."""
    rows = chunk_rows(a.shape[0], a.element_size() + 4, budget)
    outs = [torch.topk(q[s:s + rows] @ a.t(), k, dim=1) for s in range(0, q.shape[0], rows)]
    return torch.cat([o.values for o in outs]), torch.cat([o.indices for o in outs])


def gemm_only(q, a, budget):
    rows = chunk_rows(a.shape[0], a.element_size(), budget)
    for s in range(0, q.shape[0], rows):
        q[s:s + rows] @ a.t()


def recall(got: torch.Tensor, exact_v: torch.Tensor) -> float:
    """Share of the exact top-k found, ties aside (a value at or above the exact k-th counts)."""
    kth = exact_v[:, -1:]
    return float((got >= kth - 1e-6).float().sum(1).clamp(max=exact_v.shape[1]).mean()
                 / exact_v.shape[1])


def run(ns, ds, ks, batches, repeat, out, device="cuda", tflops_size=8192, budget_gb=8.0,
        append=False):
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.topk --device cuda: no CUDA device here. The GPU figures "
                         "need a CUDA machine; the kernel's logic is tested on the CPU under "
                         "TRITON_INTERPRET=1 (tests/test_engine_kernels.py).")
    budget = budget_gb * 2**30
    tflops = gemm_tflops(dev, tflops_size)
    print(f"device: {machine()['gpu'] or dev}; fp16 GEMM {tflops:.0f} TFLOP/s "
          f"({tflops_size}^3)", flush=True)
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for n in ns:
        for d in ds:
            need = n * d * (4 + 2 + 4 + 2)  # engine fp32 + fp16, the torch peers' copies
            if dev.type == "cuda" and need > 0.8 * torch.cuda.mem_get_info(dev)[0]:
                print(f"skip N={n} d={d}: {need / 2**30:.0f} GB of anchors do not fit", flush=True)
                continue
            a = torch.randn(n, d, device=dev, generator=gen)
            a /= a.norm(dim=1, keepdim=True)
            a16 = a.half()
            eng = TopKEngine(a, device=dev, kernel="triton")
            for k in ks:
                for b in batches:
                    q = torch.randn(b, d, device=dev, generator=gen)
                    q /= q.norm(dim=1, keepdim=True)
                    rep = repeat if n * b <= 2e9 else 1
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(dev)
                        base = torch.cuda.memory_allocated(dev)
                    t_asif = timed(lambda: eng.search(q, k), dev, rep)
                    peak = ((torch.cuda.max_memory_allocated(dev) - base) / 2**20
                            if dev.type == "cuda" else float("nan"))
                    ev, ei = eng.search(q, k)
                    fallback = eng.stats.fallback_rows
                    t32 = timed(lambda: torch_topk(q, a, k, budget), dev, rep)
                    tv, _ = torch_topk(q, a, k, budget)
                    t16 = timed(lambda: torch_topk(q.half(), a16, k, budget), dev, rep)
                    _, hi = torch_topk(q.half(), a16, k, budget)
                    h_exact = torch.bmm(a[hi], q[:, :, None]).squeeze(2)
                    tg = timed(lambda: gemm_only(q.half(), a16, budget), dev, rep)
                    bound = tflops * 1e12 / (2 * n * d)
                    row = {"N": n, "d": d, "k": k, "batch": b,
                           "asif_qps": b / t_asif, "torch32_qps": b / t32, "torch16_qps": b / t16,
                           "gemm16_qps": b / tg, "bound_qps": bound,
                           "asif_of_bound": b / t_asif / bound,
                           "asif_vs_torch32": t32 / t_asif, "asif_vs_torch16": t16 / t_asif,
                           "asif_ms_per_batch": 1000 * t_asif,
                           "asif_exact": float((ev[:, -1] - tv[:, -1]).abs().max()) <= 1e-5
                           and recall(ev, tv) == 1.0,
                           "torch16_recall": recall(h_exact, tv), "fallback": fallback,
                           "asif_peak_MB": peak}
                    rows.append(row)
                    print(table([row], list(row)), flush=True)
                    del q, ev, ei, tv, hi, h_exact
            del a, a16, eng
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    res = summarise(rows, machine(), str(dev), tflops, out if append else None)
    print("\n" + res["markdown"] + "\n\n" + "\n".join(res["targets"]))
    write_json(res, out)
    return res


def summarise(rows: list[dict], mach: dict, device: str, tflops: float,
              previous: str | None = None) -> dict:
    """The result document; with ``previous`` (a JSON this module wrote on the same kind of
    device), its rows are kept where this run did not measure the same (N, d, k, batch)."""
    if previous and Path(previous).is_file():
        old = json.loads(Path(previous).read_text())
        if old.get("machine", {}).get("gpu") != mach.get("gpu"):
            raise SystemExit(f"--append: {previous} was measured on "
                             f"{old.get('machine', {}).get('gpu')}, this run on {mach.get('gpu')}")
        new = {(r["N"], r["d"], r["k"], r["batch"]) for r in rows}
        rows = [r for r in old["rows"] if (r["N"], r["d"], r["k"], r["batch"]) not in new] + rows
        rows.sort(key=lambda r: (r["N"], r["d"], r["k"], r["batch"]))
    cols = ["N", "d", "batch", "asif_qps", "torch32_qps", "torch16_qps", "torch16_recall",
            "gemm16_qps", "bound_qps", "asif_of_bound", "asif_vs_torch32", "asif_vs_torch16",
            "asif_ms_per_batch", "fallback", "asif_exact", "asif_peak_MB"]
    return {"question": "top-k engine on the GPU vs torch", "machine": mach, "device": device,
            "gemm_tflops": tflops, "rows": rows, "markdown": table(rows, cols),
            "targets": targets(rows)}


# Tile shapes tried by ``tile_sweep``: (block_m, block_n, block_k, group_m, warps, stages,
# epilogue).
SWEEP_BATCH = [(128, 128, 64, 8, 8, 3, "scan"), (128, 128, 64, 8, 8, 3, "atomic"),
               (128, 64, 64, 8, 4, 4, "scan"), (128, 64, 64, 8, 4, 4, "atomic"),
               (128, 128, 32, 8, 4, 5, "scan"), (128, 128, 32, 8, 4, 5, "atomic"),
               (256, 128, 64, 8, 8, 3, "scan"), (256, 128, 64, 8, 8, 3, "atomic")]
SWEEP_SINGLE = [(16, 128, 64, 1, 4, 4, "scan"), (16, 256, 64, 1, 4, 4, "scan"),
                (16, 256, 64, 1, 4, 4, "atomic"), (16, 64, 128, 1, 4, 4, "atomic"),
                (16, 256, 128, 1, 8, 3, "atomic")]


def tile_sweep(n: int, d: int, k: int, batches: list[int], repeat: int, device="cuda") -> list:
    """The whole search's time for each tile shape of the fused kernel (same anchors, same
    queries, results checked equal to the default shape's), plus a profile of the default
    shape: where one search's device time goes, kernel by kernel."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(1)
    a = torch.randn(n, d, device=dev, generator=gen)
    a /= a.norm(dim=1, keepdim=True)
    eng = TopKEngine(a, device=dev, kernel="triton")
    out = []
    for b in batches:
        q = torch.randn(b, d, device=dev, generator=gen)
        q /= q.norm(dim=1, keepdim=True)
        eng._kernel.tiles = None
        _, ref_i = eng.search(q, k)
        for shape in SWEEP_SINGLE if b <= 16 else SWEEP_BATCH:
            eng._kernel.tiles = Tiles(*shape)
            try:
                t = timed(lambda: eng.search(q, k), dev, repeat)
                same = bool(torch.equal(eng.search(q, k)[1], ref_i))
            except Exception as exc:  # a shape the compiler or the card refuses: say so, go on
                print(f"tiles {shape}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            row = {"N": n, "d": d, "k": k, "batch": b, "tiles": "x".join(map(str, shape)),
                   "qps": b / t, "ms": 1000 * t, "same_rows": same}
            out.append(row)
            print(table([row], list(row)), flush=True)
        eng._kernel.tiles = None
        profile(eng, q, k, f"N={n} d={d} B={b}")
    return out


def profile(eng, q, k, label: str) -> None:
    """Device time per kernel of one search (torch.profiler), the 12 largest."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    dev = q.device
    eng.search(q, k)
    _sync(dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with prof(activities=acts) as p:
        eng.search(q, k)
        _sync(dev)
    by = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(f"\nprofile of one search, {label}:\n"
          + p.key_averages().table(sort_by=by, row_limit=12), flush=True)


def targets(rows: list[dict]) -> list[str]:
    """Issue 8's targets as PASS / MISS lines (only cells that were measured)."""
    out = []

    def line(ok, text):
        out.append(f"{'PASS' if ok else 'MISS'}: {text}")

    for r in rows:
        if r["N"] == 1_000_000 and r["d"] == 768 and r["batch"] >= 1024:
            line(r["asif_qps"] >= 250_000, f"B={r['batch']}: {r['asif_qps']:,.0f} q/s >= 250,000")
            line(r["asif_of_bound"] >= 0.5, f"B={r['batch']}: {r['asif_of_bound']:.2f} of the "
                 "fp16 GEMM bound >= 0.5")
            line(r["asif_vs_torch32"] >= 5, f"B={r['batch']}: {r['asif_vs_torch32']:.1f}x torch "
                 "fp32 >= 5x")
            line(r["asif_vs_torch16"] >= 2, f"B={r['batch']}: {r['asif_vs_torch16']:.1f}x torch "
                 "fp16 >= 2x")
        if r["N"] == 1_000_000 and r["batch"] == 1:
            line(r["asif_ms_per_batch"] < 1, f"d={r['d']} B=1: {r['asif_ms_per_batch']:.2f} ms < 1")
        if r["batch"] == 8192 and r["asif_peak_MB"] == r["asif_peak_MB"]:
            line(r["asif_peak_MB"] < 1024, f"N={r['N']} d={r['d']} B=8192: peak "
                 f"{r['asif_peak_MB']:.0f} MB < 1024")
        line(r["asif_exact"], f"N={r['N']} d={r['d']} B={r['batch']}: exact top-k")
    return out
