"""Issue 4: incremental anchor additions next to a full rebuild of the same index.

    python -m benchmarks.incremental                    # 100k items, 30k anchors, k=800
    python -m benchmarks.incremental --items 20000 --anchors 6000 --backend milvus

Synthetic clustered embeddings (d=384, T topics): items and anchors are noisy copies of topic
centres. Two kinds of additions, each at 1% and 10% of the anchors:
  * new-topic: the new anchors cover topics that had no anchors yet (a new domain), so only
    items of those topics can change;
  * spread: the new anchors are drawn from the existing topics, the worst case: with
    k/N = 2.7% a random new anchor enters a random item's top-k with probability ~k/N,
    so nearly every item changes and must be rewritten.
Each update is checked exact on a sample of items against a fresh projection.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np

from asif_index.anchors import AnchorPayload
from asif_index.recipe import PUBLISHED  # the recorded figures are the published recipe's
from benchmarks.common import machine, table, write_json
from connectors.index import Index
from connectors.rebuild import rebuild
from connectors.updates import update_anchors


class Enc:
    def __init__(self, modality, dim):
        self.modality, self.dim, self.name = modality, dim, f"synthetic-{modality}-{dim}"


def clustered(rng, centres, topics, n, noise):
    t = rng.choice(topics, n)
    x = centres[t] + noise * rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), t


def make_store(kind, name, tmp):
    if kind == "memory":
        from connectors.memory import MemoryStore

        return MemoryStore(name)
    if kind == "milvus":
        from connectors.milvus import MilvusStore

        return MilvusStore(name, uri=f"{tmp}/{name}.db")
    from connectors.qdrant_edge import QdrantEdgeStore

    return QdrantEdgeStore(name, path=f"{tmp}/q-{name}")


def check_exact(idx, sample=200):
    """Max abs weight difference between stored vectors and a fresh projection."""
    recs = []
    for batch in idx.store.scroll_items(2048, version=idx.version):
        recs += batch
        if len(recs) >= sample:
            break
    recs = recs[:sample]
    fresh = idx.anchors.project(np.stack([r.embedding for r in recs]), "text")
    worst, same = 0.0, 0
    for j, r in enumerate(recs):
        fi, fv = fresh.row(j)
        o = np.argsort(fi)
        if np.array_equal(fi[o], r.sparse_indices):
            same += 1
            worst = max(worst, float(np.abs(fv[o] - r.sparse_values).max()))
    return same / len(recs), worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--anchors", type=int, default=30_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--topics", type=int, default=20)
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--backend", default="memory", choices=["memory", "milvus", "qdrant"])
    ap.add_argument("--out", default="runs/bench/incremental.json")
    a = ap.parse_args(argv)
    import tempfile

    tmp = tempfile.mkdtemp(prefix="asif-incr-")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((a.topics, a.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_new_topics = max(1, a.topics // 10)
    old_topics = np.arange(a.topics - n_new_topics)
    new_topics = np.arange(a.topics - n_new_topics, a.topics)
    noise = 1.0 / np.sqrt(a.dim)  # noise norm ~ centre norm: within-topic cosine ~0.5
    anchors, _ = clustered(rng, centres, old_topics, a.anchors, noise)
    items, _ = clustered(rng, centres, np.arange(a.topics), a.items, noise)

    def fresh_index(name):
        store = make_store(a.backend, name, tmp)
        idx = Index.create(store, Enc("image", a.dim), Enc("text", a.dim), k=a.k, p=8.0,
                           recipe=PUBLISHED)
        idx.add_anchor_embeddings(anchors, anchors, [AnchorPayload(str(i)) for i in range(a.anchors)])
        return idx

    print(f"building: {a.items} items x {a.anchors} anchors (k={a.k}, d={a.dim}) on {a.backend}",
          flush=True)
    base = fresh_index("base")
    t0 = time.perf_counter()
    for s in range(0, a.items, 4096):
        recs, _ = base.records(items[s:s + 4096], "text", [f"i{j}" for j in range(s, min(a.items, s + 4096))],
                               [{} for _ in range(min(4096, a.items - s))])
        base.write(recs)
    t_build = time.perf_counter() - t0
    print(f"initial build {t_build:.1f}s", flush=True)
    t0 = time.perf_counter()
    _, n = rebuild(base, make_store(a.backend, "rebuilt", tmp))
    t_rebuild = time.perf_counter() - t0
    print(f"full rebuild (re-project + write {n} items) {t_rebuild:.1f}s", flush=True)

    rows = []
    for kind, topics in (("new-topic", new_topics), ("spread", old_topics)):
        for frac in (0.01, 0.10):
            n_new = int(round(frac * a.anchors))
            new_a, _ = clustered(np.random.default_rng(int(frac * 1000) + len(kind)), centres,
                                 topics, n_new, noise)
            if a.backend == "memory":
                idx = Index(copy.copy(base.store), base.anchors, base.encoders["image"],
                            base.encoders["text"])
                idx.store._items = dict(base.store._items)
                idx.store._anchors = dict(base.store._anchors)
                idx.store._docs = copy.deepcopy(base.store._docs)
            else:
                raise SystemExit("non-memory backends: run one scenario per fresh index "
                                 "(--items small); this benchmark reuses the built index")
            r = update_anchors(idx, add=(new_a, new_a, [AnchorPayload("new")] * n_new))
            same, worst = check_exact(idx)
            row = {"scenario": kind, "added": f"{int(frac * 100)}% ({n_new})",
                   "incremental_s": r.seconds, "rebuild_s": t_rebuild,
                   "ratio": r.seconds / t_rebuild, "items_touched": r.items_touched,
                   "items_read": r.items_scanned,
                   "touched_share": r.items_touched / a.items,
                   "exact_sample": same, "max_weight_diff": worst}
            print(table([row], list(row)), flush=True)
            rows.append(row)
    md = table(rows, list(rows[0]))
    print(f"\nindex: {a.items} items, {a.anchors} anchors, k={a.k}, d={a.dim}, {a.backend}; "
          f"initial build {t_build:.1f}s, full rebuild {t_rebuild:.1f}s\n\n{md}")
    write_json({"machine": machine(), "config": vars(a), "initial_build_s": t_build,
                "rebuild_s": t_rebuild, "rows": rows, "markdown": md}, a.out)


if __name__ == "__main__":
    main()
