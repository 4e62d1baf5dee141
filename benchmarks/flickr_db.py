"""Flickr8k through the databases: Recall@10 and ingest throughput per backend.

    python -m benchmarks.flickr_db [--backends memory,qdrant,milvus] [--throughput-images 256]

Anchors: the Flickr8k train split (each caption with its image, 30,000 pairs). Items: the
1,000 dev images, ingested through the pipeline. Queries: the 5,000 dev captions, searched in
the database (filter modality=image). The database Recall@1/5/10 must equal the in-memory
figure of the core's exact path. Throughput: the same images ingested with an empty cache
(decode + encode + project + write) next to the encoder alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from asif_index.config import AsifSettings
from asif_index.datasets import shared_data_dir
from asif_index.search import rank, recall_at
from asif_index.recipe import PUBLISHED  # the recorded figures are the published recipe's
from benchmarks.common import flickr_anchors, machine, table, write_json
from connectors.base import item_id
from connectors.index import Index
from connectors.pipeline import ingest_items
from connectors.pipeline.ingest import item_key
from connectors.pipeline.readers import SourceItem


def make_store(kind: str, tmp: Path, name: str):
    if kind == "memory":
        from connectors.memory import MemoryStore

        return MemoryStore(name)
    if kind == "qdrant":
        from connectors.qdrant_edge import QdrantEdgeStore

        return QdrantEdgeStore(name, path=str(tmp / f"q-{name}"))
    from connectors.milvus import MilvusStore

    return MilvusStore(name, uri=str(tmp / f"{name}.db"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="data folder (default ../shared/data)")
    ap.add_argument("--backends", default="memory,qdrant,milvus")
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--qdrant-queries", type=int, default=None,
                    help="queries on Qdrant (default: all)")
    ap.add_argument("--throughput-images", type=int, default=256)
    ap.add_argument("--out", default="runs/bench/flickr_db.json")
    a = ap.parse_args(argv)
    data = Path(a.data) if a.data else shared_data_dir()
    if data is None:
        print("no ../shared/data: nothing to measure")
        return
    s = AsifSettings.load()
    img_enc, txt_enc = s.encoders()
    print("embedding (cached) the Flickr8k train pairs ...", flush=True)
    train, dev, a_img, a_txt, payloads = flickr_anchors(data, img_enc, txt_enc)
    dev_imgs = sorted({r.image for r in dev})
    dev_caps = [r for r in dev][: a.queries]
    q_emb = txt_enc.encode([r.caption for r in dev_caps])
    dev_src = [SourceItem(key=p.name, image=p, payload={"image": p.name}) for p in dev_imgs]
    pos = {p.name: i for i, p in enumerate(dev_imgs)}
    relevant = [{pos[r.image.name]} for r in dev_caps]

    tmp = Path(tempfile.mkdtemp(prefix="asif-flickr-"))
    rows = []
    for kind in a.backends.split(","):
        store = make_store(kind, tmp, "flickr")
        idx = Index.create(store, img_enc, txt_enc, k=800, p=8.0, recipe=PUBLISHED)
        t0 = time.perf_counter()
        idx.add_anchor_embeddings(a_img, a_txt, payloads)
        t_anchor = time.perf_counter() - t0
        summ = ingest_items(idx, dev_src, "image", progress=False)
        # in-memory exact reference on the very same anchors (and the same queries)
        nq = (a.qdrant_queries or len(q_emb)) if kind == "qdrant" else len(q_emb)
        rel = relevant[:nq]
        items = idx.project(img_enc.encode(dev_imgs), "image")
        q = idx.project(q_emb[:nq], "text")
        _, order = rank(q, items, 10)
        mem = recall_at(order, rel)
        ids = [item_id("image", item_key(it, "image")) for it in dev_src]
        id_pos = {x: i for i, x in enumerate(ids)}
        t0 = time.perf_counter()
        hits = idx.search_vectors(q, 10, {"modality": "image"})
        t_search = time.perf_counter() - t0
        db_order = np.array([[id_pos[h.id] for h in hh] + [-1] * (10 - len(hh)) for hh in hits])
        db = recall_at(db_order, rel)
        same_top10 = float(np.mean([list(a_) == list(b_) for a_, b_ in zip(order, db_order)]))
        row = {"backend": kind, "queries": nq, "anchors": len(idx.anchors), "items": store.count_items(),
               **{f"mem_{k}": v for k, v in mem.items()}, **{f"db_{k}": v for k, v in db.items()},
               "identical_top10_lists": same_top10, "anchor_load_s": t_anchor,
               "ingest_items_s": summ.items_per_s, "search_qps": len(q) / t_search}
        print(table([row], list(row)), flush=True)
        rows.append(row)
        store.close()

    # throughput with an empty cache: the pipeline's own overhead made visible
    n = a.throughput_images
    sub = dev_src[:n]
    tp = {}
    s_nc = AsifSettings.load(cache_dir=tmp / "nocache-enc")
    enc_i, enc_t = s_nc.encoders()
    enc_i.cache = None
    t0 = time.perf_counter()
    enc_i.encode([it.image for it in sub])
    tp["encoder_only_items_s"] = n / (time.perf_counter() - t0)
    for kind in a.backends.split(","):
        store = make_store(kind, tmp, "tp")
        idx = Index.create(store, enc_i, enc_t, k=800, p=8.0, recipe=PUBLISHED)
        idx.add_anchor_embeddings(a_img, a_txt, payloads)
        summ = ingest_items(idx, sub, "image", progress=False)
        tp[f"{kind}_ingest_items_s"] = summ.items_per_s
        tp[f"{kind}_timings"] = summ.timings
        print(f"{kind}: {summ.report()}", flush=True)
        store.close()
    md = table(rows, list(rows[0]))
    tp_md = table([{"images": n, **{k: v for k, v in tp.items() if not k.endswith("timings")}}],
                  ["images"] + [k for k in tp if not k.endswith("timings")])
    print("\n" + md + "\n\n" + tp_md)
    write_json({"machine": machine(), "rows": rows, "throughput": tp, "markdown": md,
                "throughput_markdown": tp_md}, a.out)


if __name__ == "__main__":
    main()
