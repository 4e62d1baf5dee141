"""Both embedded engines at scale: ingest, search latency, recall against exact, size, reopen,
and an incremental anchor update against a rebuild on the same engine.

    python -m benchmarks.scale                              # 1e5 items, 3e4 anchors, k=800
    python -m benchmarks.scale --items 100000,1000000 --engines qdrant-edge

Synthetic clustered embeddings (d=384 for both modalities, 20 topics; anchors cover 18 of
them, as in benchmarks.incremental), projected once by the engine, so no encoder time is measured: only what the database
and the index layer cost. Every write goes through ``Index.write`` (leases and version checks
included). Queries are 200 noisy topic samples projected as text; recall@10 compares each
engine's top-10 with the exact in-memory top-10 (a miss is an exact top-10 item whose score
the engine's 10th result does not reach within 1e-5, so ties do not count as misses).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from asif_index.anchors import AnchorPayload
from asif_index.recipe import PUBLISHED  # the recorded figures are the published recipe's
from benchmarks.common import machine, table, write_json
from benchmarks.incremental import Enc
from benchmarks.incremental import clustered as _clustered


def clustered(rng, centres, topics, n, noise):
    return _clustered(rng, centres, topics, n, noise)[0]


def open_store(engine: str, root: Path, name: str = "scale"):
    if engine == "qdrant-local":  # qdrant-client's local mode, for comparison only
        from connectors.qdrant import QdrantStore

        return QdrantStore(name, path=str(root / "local"))
    if engine.startswith("qdrant-edge"):  # "qdrant-edge/float16": a sparse storage datatype
        from connectors.qdrant_edge import QdrantEdgeStore

        dtype = engine.partition("/")[2] or "float32"
        return QdrantEdgeStore(name, path=str(root / "edge"), sparse_datatype=dtype)
    from connectors.milvus import MilvusStore

    return MilvusStore(name, uri=str(root / "scale.db"), timeout=120)


def rss_mb() -> float:
    """Resident memory of this process and its children (Milvus Lite's server), MB."""
    me = os.getpid()
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().split()
            if int(pid) != me and int(stat[3]) != me:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def pct(x, q):
    return float(np.percentile(np.asarray(x) * 1000, q))


class ExactTop10:
    """The exact in-memory top-10 of every query, accumulated batch by batch as items are
    projected, so the reference costs O(queries x items) time but only O(queries x 10) memory
    (10^6 items x 800 entries would be 13 GB as one float64 matrix)."""

    def __init__(self, qsb, ncol: int):
        import scipy.sparse as sp

        n, k = qsb.indices.shape
        self.q = sp.csr_matrix((qsb.values.ravel().astype(np.float64),
                                qsb.indices.ravel().astype(np.int64), np.arange(0, n * k + 1, k)),
                               shape=(n, ncol)).T.tocsr()  # [anchors, queries]
        self.ncol = ncol
        self.top = np.zeros((n, 0), dtype=np.int64)
        self.top_s = np.zeros((n, 0))

    def add(self, sb, offset: int) -> None:
        import scipy.sparse as sp

        b, k = sb.indices.shape
        items = sp.csr_matrix((sb.values.ravel().astype(np.float64),
                               sb.indices.ravel().astype(np.int64), np.arange(0, b * k + 1, k)),
                              shape=(b, self.ncol))
        s = (items @ self.q).toarray().T  # [queries, batch]
        cand_s = np.concatenate([self.top_s, s], axis=1)
        cand = np.concatenate([self.top, np.broadcast_to(np.arange(offset, offset + b), s.shape)],
                              axis=1)
        # stable on (score desc, earlier item first), as a whole-matrix argsort would be
        order = np.lexsort((cand, -cand_s), axis=1)[:, :10]
        self.top = np.take_along_axis(cand, order, 1)
        self.top_s = np.take_along_axis(cand_s, order, 1)


def run_engine(engine, n_items, a, anchors_emb, items_emb, queries, ids, root) -> dict:
    """One engine at one size; the row also carries the exact reference (``_exact``) built
    from this engine's own projections, and the hits (``_hits``)."""
    from connectors.base import point_records
    from connectors.index import Index

    d = root / f"{engine.replace('/', '-')}-{n_items}"
    d.mkdir()
    store = open_store(engine, d)
    idx = Index.create(store, Enc("image", a.dim), Enc("text", a.dim), k=a.k, p=8.0,
                       recipe=PUBLISHED)
    idx.add_anchor_embeddings(anchors_emb, anchors_emb,
                              [AnchorPayload(f"a{i}") for i in range(len(anchors_emb))])
    rss0 = rss_mb()
    exact = ExactTop10(idx.project(queries, "text"), len(anchors_emb))
    t_ref = 0.0
    # ingest (projection timed separately, once per batch)
    t_proj = t_write = 0.0
    for s in range(0, n_items, a.batch):
        e = items_emb[s:s + a.batch]
        t0 = time.perf_counter()
        sb = idx.project(e, "text")
        t1 = time.perf_counter()
        recs = point_records(sb, ids[s:s + a.batch], "text", e, [{"n": j} for j in range(s, s + len(e))],
                             idx.version)
        idx.write(recs)
        t2 = time.perf_counter()
        t_write += t2 - t1
        t_proj += t1 - t0
        exact.add(sb, s)
        t_ref += time.perf_counter() - t2
        if (s // a.batch) % 50 == 49:
            done = s + len(e)
            print(f"  {engine}: {done}/{n_items} items, {done / (t_write + 1e-9):.0f} items/s "
                  f"written, rss {rss_mb():.0f} MB", flush=True)
    t0 = time.perf_counter()
    if hasattr(store, "optimize"):
        store.optimize()
    t_opt = time.perf_counter() - t0
    if hasattr(store, "flush"):
        store.flush()
    row = {"engine": engine, "items": n_items, "ingest_items_s": n_items / (t_write + t_opt),
           "project_items_s": n_items / t_proj, "optimize_s": t_opt}
    # search: 1 client, then 8
    qsb = idx.project(queries, "text")
    q_rows = [qsb.row(r) for r in range(len(queries))]
    idx.search_vectors(qsb, 10)  # warm
    lat, got = [], []
    for r in range(len(queries)):
        t0 = time.perf_counter()
        hits = store.search(*q_rows[r], 10, None, idx.version)
        lat.append(time.perf_counter() - t0)
        got.append(hits)
    row.update(p50_ms=pct(lat, 50), p95_ms=pct(lat, 95), p99_ms=pct(lat, 99))
    for clients in (8,):
        lat8: list[float] = []

        def one(r):
            t0 = time.perf_counter()
            store.search(*q_rows[r], 10, None, idx.version)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as ex:
            lat8 = list(ex.map(one, [r % len(q_rows) for r in range(len(q_rows) * 2)]))
        wall = time.perf_counter() - t0
        row.update({f"c{clients}_qps": len(lat8) / wall, f"c{clients}_p50_ms": pct(lat8, 50),
                    f"c{clients}_p99_ms": pct(lat8, 99)})
    row["rss_mb"] = rss_mb()
    row["rss_growth_mb"] = row["rss_mb"] - rss0
    row["disk_mb"] = du_mb(d)
    row["bytes_per_item"] = row["disk_mb"] * 2**20 / n_items
    row["_hits"] = got
    row["_exact"] = (exact.top, exact.top_s)
    # reopen: a new process would build the store object and open the index
    store.close()
    cache = d / "cache"
    t0 = time.perf_counter()
    store2 = open_store(engine, d)
    cold = Index.open(store2, Enc("image", a.dim), Enc("text", a.dim), cache_dir=str(cache))
    row["reopen_s"] = time.perf_counter() - t0
    store2.close()
    t0 = time.perf_counter()
    store3 = open_store(engine, d)
    warm = Index.open(store3, Enc("image", a.dim), Enc("text", a.dim), cache_dir=str(cache))
    row["reopen_cached_s"] = time.perf_counter() - t0
    assert warm.version == cold.version and len(warm.anchors) == len(cold.anchors)
    if not a.skip_incremental and n_items <= 200_000:
        from connectors.rebuild import rebuild
        from connectors.updates import update_anchors

        t0 = time.perf_counter()
        _, n = rebuild(warm, open_store(engine, d, "rebuilt"))
        row["rebuild_s"] = time.perf_counter() - t0
        rng = np.random.default_rng(7)
        new = clustered(rng, a.centres, np.arange(a.covered, a.topics),
                        int(0.01 * len(anchors_emb)), a.noise)
        r = update_anchors(warm, add=(new, new, [AnchorPayload("new")] * len(new)))
        row["incremental_1pct_s"] = r.seconds
        row["incremental_vs_rebuild"] = r.seconds / row["rebuild_s"]
        row["items_touched"] = r.items_touched
    store3.close()
    shutil.rmtree(d, ignore_errors=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", default="100000")
    ap.add_argument("--anchors", type=int, default=30_000)
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--engines", default="qdrant-edge,milvus-lite",
                    help="qdrant-edge[/float16|/uint8] (sparse storage datatype), milvus-lite")
    ap.add_argument("--topics", type=int, default=20,
                    help="topics of the synthetic data; the anchors cover all but the last "
                         "tenth, the items all of them, and the incremental update adds 1%% "
                         "anchors in the uncovered ones (a new domain)")
    ap.add_argument("--skip-incremental", action="store_true")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of --out for other (engine, items) pairs, so sizes can "
                         "be measured in separate runs")
    ap.add_argument("--out", default="runs/bench/scale.json")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    a.centres = rng.standard_normal((a.topics, a.dim)).astype(np.float32)
    a.covered = a.topics - max(1, a.topics // 10)
    a.centres /= np.linalg.norm(a.centres, axis=1, keepdims=True)
    a.noise = 1.0 / np.sqrt(a.dim)
    anchors_emb = clustered(rng, a.centres, np.arange(a.covered), a.anchors, a.noise)
    queries = clustered(rng, a.centres, np.arange(a.topics), a.queries, a.noise)
    root = Path(tempfile.mkdtemp(prefix="asif-scale-"))
    rows = []
    try:
        for n_items in (int(x) for x in a.items.split(",")):
            items_emb = clustered(np.random.default_rng(n_items), a.centres, np.arange(a.topics),
                                  n_items, a.noise)
            from connectors.base import item_id

            ids = [item_id("text", f"i{j}") for j in range(n_items)]
            for engine in a.engines.split(","):
                print(f"{engine}: {n_items} items x {a.anchors} anchors, k={a.k}", flush=True)
                row = run_engine(engine, n_items, a, anchors_emb, items_emb, queries, ids, root)
                hits = row.pop("_hits")
                top, top_s = row.pop("_exact")
                rec = []
                for r in range(len(queries)):
                    got = {h.id for h in hits[r]}
                    tenth = hits[r][-1].score if len(hits[r]) == 10 else -1
                    ok = sum(ids[j] in got or tenth >= s - 1e-5 for j, s in zip(top[r], top_s[r]))
                    rec.append(ok / 10)
                row["recall_at_10"] = float(np.mean(rec))
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
                      flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cols = ["engine", "items", "ingest_items_s", "optimize_s", "p50_ms", "p95_ms", "p99_ms",
            "c8_qps", "c8_p50_ms", "c8_p99_ms", "recall_at_10", "bytes_per_item", "rss_mb",
            "reopen_s", "reopen_cached_s", "rebuild_s", "incremental_1pct_s",
            "incremental_vs_rebuild", "items_touched"]
    if a.append and Path(a.out).is_file():
        import json

        fresh = {(r["engine"], r["items"]) for r in rows}
        old_rows = [r for r in json.loads(Path(a.out).read_text())["rows"]
                    if (r["engine"], r["items"]) not in fresh]
        rows = sorted(old_rows + rows, key=lambda r: (r["engine"], r["items"]))
    md = table(rows, cols)
    print(md)
    write_json({"machine": machine(), "config": {k: v for k, v in vars(a).items()
                                                 if k not in ("centres", "noise", "covered")},
                "rows": rows, "markdown": md}, a.out)


if __name__ == "__main__":
    main()
