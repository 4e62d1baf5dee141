"""Question 2: end-to-end query latency (encode, project, database search).

    python -m benchmarks.latency                   # 20,000 items
    python -m benchmarks.latency --items 100000    # the issue's size; slower to build

Anchors: the 30,000 Flickr8k train pairs (real embeddings, cached). Items: image items whose
embeddings are noisy copies of real anchor images, so their sparse vectors look like real
ones. Queries: Flickr8k dev captions as text. p50/p95/p99 per stage and end to end, with 1 and
8 concurrent clients (threads), on the embedded Qdrant engine (Qdrant Edge) and Milvus Lite.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from asif_index.recipe import PUBLISHED  # the recorded figures are the published recipe's
from benchmarks.common import flickr_bench_setup, machine, table, write_json
from benchmarks.flickr_db import make_store
from connectors.index import Index


def pct(xs, q):
    return 1000 * float(np.percentile(xs, q))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--backends", default="milvus,qdrant")
    ap.add_argument("--qdrant-items", type=int, default=None,
                    help="cap the Qdrant collection (default: --items)")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--queries", type=int, default=200, help="queries per client")
    ap.add_argument("--keep", type=int, default=0, help="query entries kept (0 = all k)")
    ap.add_argument("--out", default="runs/bench/latency.json")
    a = ap.parse_args(argv)
    setup = flickr_bench_setup()
    if setup is None:
        return
    img_enc, txt_enc, train, dev, a_img, a_txt, payloads = setup
    rng = np.random.default_rng(0)
    base = a_img[rng.integers(0, len(a_img), a.items)]
    items = base + 0.5 * rng.standard_normal(base.shape).astype(np.float32) * base.std()
    captions = [r.caption for r in dev]
    tmp = Path(tempfile.mkdtemp(prefix="asif-lat-"))
    rows = []
    for kind in a.backends.split(","):
        n_items = min(a.items, a.qdrant_items or a.items) if kind == "qdrant" else a.items
        store = make_store(kind, tmp, "lat")
        idx = Index.create(store, img_enc, txt_enc, k=800, p=8.0, recipe=PUBLISHED)
        idx.add_anchor_embeddings(a_img, a_txt, payloads)
        t0 = time.perf_counter()
        for st in range(0, n_items, 2048):
            end = min(n_items, st + 2048)
            recs, _ = idx.records(items[st:end], "image", [f"x{j}" for j in range(st, end)],
                                  [{"n": j} for j in range(st, end)])
            idx.write(recs)
        build = time.perf_counter() - t0
        txt_enc.cache = None  # queries are encoded for real, never read from the cache
        idx.project(txt_enc.encode(captions[:4]), "text")  # warm engine + encoder
        for n_clients in [int(c) for c in a.clients.split(",")]:
            stages: dict[str, list[float]] = {"encode": [], "project": [], "search": [], "total": []}
            lock = threading.Lock()

            def client(cid: int) -> None:
                mine = {k: [] for k in stages}
                for i in range(a.queries):
                    text = captions[(cid * a.queries + i) % len(captions)]
                    t0 = time.perf_counter()
                    e = txt_enc.encode([text])
                    t1 = time.perf_counter()
                    qi, qv = idx.project(e, "text").row(0)
                    if a.keep and len(qv) > a.keep:
                        top = np.argpartition(-qv, a.keep - 1)[: a.keep]
                        qi, qv = qi[top], qv[top]
                    t2 = time.perf_counter()
                    store.search(qi, qv, 10, None, idx.version)
                    t3 = time.perf_counter()
                    for k_, v in zip(("encode", "project", "search", "total"),
                                     (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                        mine[k_].append(v)
                with lock:
                    for k_ in stages:
                        stages[k_] += mine[k_]

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            row = {"backend": kind, "items": n_items, "anchors": len(idx.anchors),
                   "clients": n_clients, "qps": n_clients * a.queries / wall,
                   **{f"{k}_p50_ms": pct(v, 50) for k, v in stages.items()},
                   "total_p95_ms": pct(stages["total"], 95), "total_p99_ms": pct(stages["total"], 99),
                   "build_s": build}
            print(table([row], list(row)), flush=True)
            rows.append(row)
        store.close()
    md = table(rows, list(rows[0]))
    print("\n" + md)
    write_json({"machine": machine(), "rows": rows, "markdown": md}, a.out)


if __name__ == "__main__":
    main()
