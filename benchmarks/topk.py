"""Question 1: the top-k engine against faiss IndexFlatIP and torch matmul+topk.

    python -m benchmarks.topk                       # default: N=1e5,1e6  d=384  k=800  B=1,1024
    python -m benchmarks.topk --n 10000,100000 --d 384,768 --k 100,800,2000 --batch 1,64,1024

Every engine answers the same queries; results are checked against faiss (same top-k sets,
ties aside) in the same run, and queries/s are reported with the ratio to faiss.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np
import torch

from asif_index.engine import TopKEngine, cpu_has_fast_bf16
from benchmarks.common import best_time, machine, table, write_json


def unit(rng, n, d):
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def agreement(i_a: np.ndarray, i_b: np.ndarray) -> float:
    """Mean share of common members between two top-k index sets (1.0 = identical)."""
    k = i_a.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(i_a.tolist(), i_b.tolist())]))


def torch_topk(a: torch.Tensor, q: np.ndarray, k: int, block: int = 262144):
    qt = torch.from_numpy(q)
    best_v = best_i = None
    for s in range(0, a.shape[0], block):
        v, i = torch.topk(qt @ a[s:s + block].T, min(k, min(block, a.shape[0] - s)), dim=1)
        i = i + s
        if best_v is not None:
            v, j = torch.topk(torch.cat([best_v, v], 1), k, dim=1)
            i = torch.cat([best_i, i], 1).gather(1, j)
        best_v, best_i = v, i
    return best_v.numpy(), best_i.numpy()


def run(ns, ds, ks, batches, repeat, out, faiss_threads=None):
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 0  # BLAS path for every batch size (fair peer)
    rng = np.random.default_rng(0)
    rows = []
    precisions = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])
    for n in ns:
        for d in ds:
            a = unit(rng, n, d)
            index = faiss.IndexFlatIP(d)
            index.add(a)
            at = torch.from_numpy(a)
            engines = {p: TopKEngine(a, precision=p, device="cpu") for p in precisions}
            for k in ks:
                for b in batches:
                    q = unit(rng, b, d)
                    rep = repeat if n * b < 2e8 else 1
                    t_faiss = best_time(lambda: index.search(q, k), rep)
                    _, fi = index.search(q, k)
                    t_torch = best_time(lambda: torch_topk(at, q, k), rep)
                    row = {"N": n, "d": d, "k": k, "batch": b,
                           "faiss_qps": b / t_faiss, "torch_qps": b / t_torch}
                    for p, eng in engines.items():
                        t = best_time(lambda: eng.search(q, k), rep)
                        _, ei = eng.search(q, k)
                        row[f"asif_{p}_qps"] = b / t
                        row[f"asif_{p}_vs_faiss"] = t_faiss / t
                        row[f"asif_{p}_agree"] = agreement(ei, fi)
                        row[f"asif_{p}_fallback_rows"] = eng.stats.fallback_rows
                    row["torch_vs_faiss"] = t_faiss / t_torch
                    # resident anchor data (MB) and the largest transient buffer of one search
                    row["faiss_MB"] = index.ntotal * d * 4 / 2**20
                    row["torch_MB"] = (n * d * 4 + b * min(n, 262144) * 4) / 2**20
                    for p, eng in engines.items():
                        qb, ab = eng._kernel._blocks(b)
                        transient = qb * ab * (4 if p == "fp32" else 2) + b * max(4 * k, 256) * 12
                        row[f"asif_{p}_MB"] = (eng.resident_bytes + transient) / 2**20
                    rows.append(row)
                    print(table([row], list(row)), flush=True)
            del index, at, engines, a
            gc.collect()
    cols = ["N", "d", "k", "batch", "faiss_qps", "torch_qps"] + [
        c for p in precisions for c in (f"asif_{p}_qps", f"asif_{p}_vs_faiss", f"asif_{p}_agree")
    ] + ["faiss_MB", "torch_MB"] + [f"asif_{p}_MB" for p in precisions]
    md = table(rows, cols)
    print("\n" + md)
    res = {"question": "top-k engine vs faiss IndexFlatIP and torch matmul+topk",
           "machine": machine(), "rows": rows, "markdown": md}
    write_json(res, out)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu",
                    help="cpu (against faiss) or cuda (against torch; see benchmarks.topk_gpu)")
    ap.add_argument("--n", default=None, help="anchors; default 1e5,1e6 (cpu), 1e5,1e6,1e7 (cuda)")
    ap.add_argument("--d", default=None, help="dimension; default 384 (cpu), 384,768 (cuda)")
    ap.add_argument("--k", default="800")
    ap.add_argument("--batch", default=None, help="default 1,1024 (cpu), 1,64,1024,8192 (cuda)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true",
                    help="cuda: keep the rows of --out that this run does not measure again")
    ap.add_argument("--sweep", action="store_true",
                    help="cuda: also time the fused kernel's tile shapes at N=1e6 d=768, B=1 and "
                    "8192, and profile one search per batch size")
    a = ap.parse_args(argv)
    ints = lambda s: [int(float(x)) for x in s.split(",")]  # noqa: E731
    if a.device != "cpu":
        from benchmarks.topk_gpu import run as run_gpu

        run_gpu(ints(a.n or "1e5,1e6,1e7"), ints(a.d or "384,768"), ints(a.k),
                ints(a.batch or "1,64,1024,8192"), a.repeat, a.out or "runs/bench/topk_gpu.json",
                device=a.device, append=a.append)
        if a.sweep:
            from benchmarks.topk_gpu import tile_sweep

            rows = tile_sweep(1_000_000, 768, ints(a.k)[0], [1, 8192], a.repeat, a.device)
            write_json({"question": "fused kernel tile shapes", "machine": machine(),
                        "rows": rows, "markdown": table(rows, list(rows[0]) if rows else [])},
                   (a.out or "runs/bench/topk_gpu.json").replace(".json", "_tiles.json"))
        return
    a.n, a.d, a.batch = a.n or "100000,1000000", a.d or "384", a.batch or "1,1024"
    a.out = a.out or "runs/bench/topk.json"
    run(ints(a.n), ints(a.d), ints(a.k), ints(a.batch), a.repeat, a.out)


if __name__ == "__main__":
    main()
