"""Question 4: query-side pruning of the sparse vector in the database.

    python -m benchmarks.pruning [--backends milvus,qdrant] [--keep 800,400,200,100,50,25]

A relative vector has k=800 entries, but after the power p=8 a few anchors carry almost all
of its weight. Keeping only the m largest query entries cuts posting-list traffic in the
database. For each m this measures, on real data (Flickr8k dev images as items, their
captions as queries, train pairs as anchors): Recall@10 against the ground truth, overlap of
the top-10 with the unpruned search, and search latency. The default is the smallest m that
loses < 1% of Recall@10 (relative); the overlap column shows what it costs in exactness.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from asif_index.search import recall_at
from asif_index.recipe import PUBLISHED  # the recorded figures are the published recipe's
from benchmarks.common import flickr_bench_setup, machine, table, write_json
from benchmarks.flickr_db import make_store
from connectors.index import Index
from connectors.pipeline import ingest_items
from connectors.pipeline.readers import SourceItem


def prune(indices: np.ndarray, values: np.ndarray, m: int):
    if len(values) <= m:
        return indices, values
    top = np.argpartition(-values, m - 1)[:m]
    return indices[top], values[top]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backends", default="milvus,qdrant", help="milvus,qdrant (embedded engines)")
    ap.add_argument("--keep", default="800,400,200,100,50,25,10")
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--out", default="runs/bench/pruning.json")
    a = ap.parse_args(argv)
    setup = flickr_bench_setup()
    if setup is None:
        return
    img_enc, txt_enc, train, dev, a_img, a_txt, payloads = setup
    dev_imgs = sorted({r.image for r in dev})
    caps = dev[: a.queries]
    q_emb = txt_enc.encode([r.caption for r in caps])
    keeps = [int(x) for x in a.keep.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="asif-prune-"))
    rows = []
    for kind in a.backends.split(","):
        store = make_store(kind, tmp, "prune")
        idx = Index.create(store, img_enc, txt_enc, k=800, p=8.0, recipe=PUBLISHED)
        idx.add_anchor_embeddings(a_img, a_txt, payloads)
        ingest_items(idx, [SourceItem(p.name, image=p, payload={"image": p.name}) for p in dev_imgs],
                     "image", progress=False)
        q = idx.project(q_emb, "text")
        full = None
        for m in keeps:
            lat, got = [], []
            for r in range(len(q)):
                qi, qv = prune(*q.row(r), m)
                t0 = time.perf_counter()
                hits = store.search(qi, qv, 10, {"modality": "image"}, idx.version)
                lat.append(time.perf_counter() - t0)
                got.append([h.payload["image"] for h in hits])
            if full is None:
                full = got
            overlap = float(np.mean([len(set(g) & set(f)) / max(1, len(f)) for g, f in zip(got, full)]))
            pos = {p.name: i for i, p in enumerate(dev_imgs)}
            order = np.array([[pos[x] for x in g] + [-1] * (10 - len(g)) for g in got])
            rec = recall_at(order, [{pos[c.image.name]} for c in caps])
            row = {"backend": kind, "keep": m, "top10_overlap_vs_full": overlap,
                   "R@10": rec["R@10"], "R@1": rec["R@1"],
                   "p50_ms": 1000 * statistics.median(lat),
                   "p95_ms": 1000 * float(np.percentile(lat, 95))}
            print(table([row], list(row)), flush=True)
            rows.append(row)
        store.close()
    chosen = {}
    for kind in a.backends.split(","):
        sub = [r for r in rows if r["backend"] == kind]
        full_r10 = next(r["R@10"] for r in sub if r["keep"] == max(keeps))
        for r in sub:
            r["R@10_loss_rel"] = (full_r10 - r["R@10"]) / full_r10 if full_r10 else 0.0
        ok = [r for r in sub if r["R@10_loss_rel"] < 0.01]
        chosen[kind] = min(r["keep"] for r in ok) if ok else max(keeps)
    md = table(rows, list(rows[0]))
    print(f"\n{md}\n\nsmallest query size losing < 1% Recall@10 (relative): {chosen}")
    write_json({"machine": machine(), "rows": rows, "chosen": chosen, "markdown": md}, a.out)


if __name__ == "__main__":
    main()
