"""Search and updates at scale (issue 25): folded QB-Norm, two-stage search and bounded
anchor updates, each against its peers measured in the same run.

    python -m benchmarks.scale                                   # 1e5 items, tuned, both ways
    python -m benchmarks.scale --items 1000000 --engines qdrant-edge --directions t2i

Synthetic clustered embeddings (d=384 both modalities, 20 topics; an image anchor and its
caption share a topic sample plus modality noise; anchors cover 18 topics), projected once by
the index, so no encoder time is measured. Per engine, size, recipe and direction (t2i: text
queries over an image collection; i2t: image queries over texts) it reports single-client p50
/ p95 of

* ``default``: what ``Index.search`` runs: QB-Norm folded (tuned) + two stages, C by size;
* ``plain``: the same two stages without QB-Norm (the 1.2x target's denominator);
* ``exact``: one exact sparse stage (``--exact``), with the fold; ``exact_plain`` without it
  (``qbnorm_cost_exact``: what folding costs the exact search);
* ``rerank``: today's re-ranking path (plain top 100 read back, rescored per query);
* ``dense``: the peer, a 384-d dense index of the same items on the same engine (Qdrant:
  HNSW m=16, ef 128; Milvus Lite has no HNSW: IVF_FLAT, nprobe 16);

recall@10 of each against the exact in-memory ranking (the normalised one where the recipe
normalises; ties within 1e-5 are not misses), a sweep of the candidate count, bytes per item,
and for ``--updates`` the +1% / +10% new-domain anchor updates against a rebuild.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from asif_index.anchors import AnchorPayload
from asif_index.recipe import RECIPES
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


class ExactTopK:
    """The exact in-memory top-10 of every query over the items seen so far, by
    ``s(q, x) + fold(x)`` (fold 0: the plain ranking), accumulated batch by batch."""

    def __init__(self, qsb, ncol: int):
        import scipy.sparse as sp

        self.q = sp.csr_matrix(qsb.to_csr(ncol)).T.tocsr().astype(np.float64)
        self.ncol = ncol
        n = len(qsb)
        self.top = {k: np.zeros((n, 0), np.int64) for k in ("plain", "fold")}
        self.top_s = {k: np.zeros((n, 0)) for k in ("plain", "fold")}

    def add(self, sb, fold: np.ndarray | None, offset: int) -> None:
        s = (sb.to_csr(self.ncol).astype(np.float64) @ self.q).toarray().T  # [queries, batch]
        for kind, add in (("plain", 0.0), ("fold", fold)):
            if add is None:
                continue
            sc = s + (np.asarray(add, np.float64)[None, :] if kind == "fold" else 0.0)
            cand_s = np.concatenate([self.top_s[kind], sc], axis=1)
            cand = np.concatenate([self.top[kind], np.broadcast_to(
                np.arange(offset, offset + sc.shape[1]), sc.shape)], axis=1)
            order = np.lexsort((cand, -cand_s), axis=1)[:, :10]
            self.top[kind] = np.take_along_axis(cand, order, 1)
            self.top_s[kind] = np.take_along_axis(cand_s, order, 1)


def recall_at_10(hits, top, top_s, ids) -> float:
    """Share of each exact top-10 found (an exact item whose score the 10th hit reaches
    within 1e-5 counts: ties are not misses)."""
    rec = []
    for r, hs in enumerate(hits):
        got = {h.id for h in hs}
        tenth = hs[-1].score if len(hs) == 10 else -np.inf
        rec.append(np.mean([ids[j] in got or tenth >= s - 1e-5
                            for j, s in zip(top[r], top_s[r])]))
    return float(np.mean(rec))


def timed(fn, reps):
    lat, out = [], []
    for r in range(reps):
        t0 = time.perf_counter()
        out.append(fn(r))
        lat.append(time.perf_counter() - t0)
    return lat, out


def synthetic(a, rng):
    """Anchors (image, text) and a sampler of (image, text) embeddings of the same topics."""
    def pair(n, topics, seed):
        g = np.random.default_rng(seed)
        t = g.choice(topics, n)
        base = a.centres[t] + a.noise * g.standard_normal((n, a.dim)).astype(np.float32)
        img = base + 0.5 * a.noise * g.standard_normal((n, a.dim)).astype(np.float32)
        txt = base + 0.5 * a.noise * g.standard_normal((n, a.dim)).astype(np.float32)
        return (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32), \
            (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
    return pair


class DensePeer:
    """The peer: the same items' raw embeddings in a dense ANN index on the same engine."""

    def __init__(self, engine: str, root: Path, dim: int):
        self.engine = engine
        if engine.startswith("qdrant"):
            import qdrant_edge as q

            self.q = q
            cfg = q.EdgeConfig(vectors={"v": q.EdgeVectorParams(size=dim,
                                                                distance=q.Distance.Dot)},
                               hnsw_config=q.HnswIndexConfig(m=16, ef_construct=128, full_scan_threshold=10_000))
            self.shard = q.EdgeShard.create(str(root / "dense"), cfg)
        else:
            from pymilvus import DataType, MilvusClient

            self.c = MilvusClient(str(root / "dense.db"))
            sch = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            sch.add_field("id", DataType.INT64, is_primary=True)
            sch.add_field("v", DataType.FLOAT_VECTOR, dim=dim)
            ip = self.c.prepare_index_params()
            ip.add_index("v", index_type="IVF_FLAT", metric_type="IP", params={"nlist": 1024})
            self.c.create_collection("dense", schema=sch, index_params=ip)

    def add(self, emb: np.ndarray, offset: int) -> None:
        if self.engine.startswith("qdrant"):
            q = self.q
            for s in range(0, len(emb), 512):
                self.shard.update(q.UpdateOperation.upsert_points(
                    [q.Point(offset + s + j, {"v": e.tolist()}, {})
                     for j, e in enumerate(emb[s:s + 512])]))
        else:
            for s in range(0, len(emb), 2048):
                self.c.insert("dense", [{"id": offset + s + j, "v": e.tolist()}
                                        for j, e in enumerate(emb[s:s + 2048])])

    def finish(self) -> None:
        if self.engine.startswith("qdrant"):
            self.shard.optimize()
        else:
            self.c.flush("dense")

    def search(self, v: np.ndarray):
        if self.engine.startswith("qdrant"):
            q = self.q
            return self.shard.query(q.QueryRequest(limit=10, query=q.Query.Nearest(
                v.tolist(), using="v"), params=q.SearchParams(hnsw_ef=128)))
        return self.c.search("dense", [v.tolist()], limit=10, anns_field="v",
                             search_params={"metric_type": "IP", "params": {"nprobe": 16}})

    def close(self) -> None:
        if self.engine.startswith("qdrant"):
            self.shard.close()
        else:
            self.c.close()


def run(engine, n_items, recipe_name, direction, a, root) -> dict:
    from connectors.base import item_id, point_records
    from connectors.index import Index
    from connectors.search_stages import candidate_count

    item_mod, query_mod = ("image", "text") if direction == "t2i" else ("text", "image")
    d = root / f"{engine.replace('/', '-')}-{n_items}-{recipe_name}-{direction}"
    d.mkdir()
    store = open_store(engine, d)
    recipe = RECIPES[recipe_name]
    idx = Index.create(store, Enc("image", a.dim), Enc("text", a.dim), k=a.k, p=8.0,
                       recipe=recipe, candidate_keep=a.candidate_keep)
    pair = synthetic(a, None)
    a_img, a_txt = pair(a.anchors, np.arange(a.covered), 1)
    t0 = time.perf_counter()
    idx.add_anchor_embeddings(a_img, a_txt, [AnchorPayload(f"a{i}") for i in range(a.anchors)])
    fold = idx.anchors.fold
    row = {"engine": engine, "items": n_items, "recipe": recipe_name, "direction": direction,
           "anchors": a.anchors, "candidate_keep": a.candidate_keep,
           "anchors_s": time.perf_counter() - t0}
    if fold is not None:
        t0 = time.perf_counter()
        fold.warm()
        row["bank_build_s"] = time.perf_counter() - t0
    q_img, q_txt = pair(a.queries, np.arange(a.topics), 2)
    q_emb = q_txt if query_mod == "text" else q_img
    qsb = idx.project(q_emb, query_mod)
    exact = ExactTopK(qsb, a.anchors)
    peer = DensePeer(engine, d, a.dim) if a.peer else None
    ids = [item_id(item_mod, f"i{j}") for j in range(n_items)]
    t_proj = t_fold = t_write = 0.0
    for s in range(0, n_items, a.batch):
        b = min(a.batch, n_items - s)
        img, txt = pair(b, np.arange(a.topics), 1000 + s)
        e = img if item_mod == "image" else txt
        t0 = time.perf_counter()
        sb = idx.project(e, item_mod)
        t1 = time.perf_counter()
        recs = point_records(sb, ids[s:s + b], item_mod, e,
                             [{"n": j} for j in range(s, s + b)], idx.version)
        if fold is not None:
            fold.fold_records(recs)
        t2 = time.perf_counter()
        idx.write(recs)
        t3 = time.perf_counter()
        t_proj, t_fold, t_write = t_proj + t1 - t0, t_fold + t2 - t1, t_write + t3 - t2
        exact.add(sb, None if fold is None else np.array([r.fold for r in recs]), s)
        if peer is not None:
            peer.add(e, s)
        if (s // a.batch) % 25 == 24:
            print(f"  {s + b}/{n_items} items: project {t_proj:.0f} s, fold {t_fold:.0f} s, "
                  f"write {t_write:.0f} s, rss {rss_mb():.0f} MB", flush=True)
    t0 = time.perf_counter()
    if hasattr(store, "optimize"):
        store.optimize()
    if hasattr(store, "flush"):
        store.flush()
    if peer is not None:
        peer.finish()
    row.update(project_items_s=n_items / t_proj, fold_items_s=(n_items / t_fold) if fold else None,
               write_items_s=n_items / t_write, optimize_s=time.perf_counter() - t0,
               disk_mb=du_mb(d), rss_mb=rss_mb())
    row["bytes_per_item"] = du_mb(d / "edge" if engine.startswith("qdrant") else d) * 2**20 / n_items
    reps = len(q_emb)
    C = candidate_count(n_items, 10)
    row["candidates"] = C

    rows_q = [type(qsb)(qsb.indices[r:r + 1], qsb.values[r:r + 1], qsb.kth_similarity[r:r + 1])
              for r in range(reps)]

    def variant(fold_on, exact_on=False, cands=None, n=reps):
        return timed(lambda r: idx.search_vectors(rows_q[r], 10, fold=fold_on, exact=exact_on,
                                                  candidates=cands)[0], n)

    # warm every variant over every query first: the first variant timed after the writes
    # otherwise pays the engine's cold pages (it read 3x slower than the same search after)
    for fold_on, exact_on in ((fold is not None, False), (False, False), (fold is not None, True),
                             (False, True)):
        variant(fold_on, exact_on)
    ref = "fold" if fold is not None else "plain"
    for name, kw, kind in (("default", {"fold_on": fold is not None}, ref),
                           ("plain", {"fold_on": False}, "plain"),
                           ("exact", {"fold_on": fold is not None, "exact_on": True}, ref),
                           ("exact_plain", {"fold_on": False, "exact_on": True}, "plain")):
        if name == "exact_plain" and fold is None:
            continue  # the same search as 'exact'
        n = reps if not name.startswith("exact") or n_items <= 200_000 else min(reps, 40)
        lat, hits = variant(n=n, **kw)
        row[f"{name}_p50_ms"], row[f"{name}_p95_ms"] = pct(lat, 50), pct(lat, 95)
        row[f"{name}_recall"] = recall_at_10(hits, exact.top[kind][:n], exact.top_s[kind][:n], ids)
    if fold is not None:
        row["qbnorm_cost"] = row["default_p50_ms"] / row["plain_p50_ms"]
        row["qbnorm_cost_exact"] = row["exact_p50_ms"] / row["exact_plain_p50_ms"]
        n = min(reps, 30)
        lat, res = timed(lambda r: _rerank(idx, rows_q[r], query_mod), n)
        row["rerank_p50_ms"] = pct(lat, 50)
        row["rerank_recall"] = recall_at_10(res, exact.top["fold"][:n], exact.top_s["fold"][:n],
                                            ids)
    sweep = {}
    for c in a.sweep:
        if c < n_items:
            lat, hits = variant(fold is not None, cands=c)
            sweep[c] = {"p50_ms": pct(lat, 50),
                        "recall": recall_at_10(hits, exact.top[ref], exact.top_s[ref], ids)}
    row["sweep"] = sweep
    if fold is not None:  # the plain top C re-scored by the fold, against the whole-collection fold
        fsweep = {}
        for c in a.fold_sweep:
            if c < n_items:
                lat, hits = timed(lambda r: idx.search_vectors(rows_q[r], 10, fold=True,
                                                               fold_candidates=c)[0], reps)
                fsweep[c] = {"p50_ms": pct(lat, 50), "recall": recall_at_10(
                    hits, exact.top["fold"], exact.top_s["fold"], ids)}
        row["fold_rescore_sweep"] = fsweep
    if peer is not None:
        lat, _ = timed(lambda r: peer.search(q_emb[r]), reps)
        row["dense_p50_ms"], row["dense_p95_ms"] = pct(lat, 50), pct(lat, 95)
        peer.close()
    if a.updates:
        row.update(update_figures(idx, engine, d, a, pair))
    store.close()
    shutil.rmtree(d, ignore_errors=True)
    return row


def _rerank(idx, q, query_mod):
    """Today's path before folding: plain top 100 read back and rescored per query."""
    from connectors.search_stages import reranked

    fold = idx.anchors.fold
    return reranked(idx, idx.anchors, q, query_mod, 10, None, None, idx.version,
                    fold.temperature, True).hits


def update_figures(idx, engine, d, a, pair) -> dict:
    """+1% and +10% new-domain anchors (topics no anchor covered) against a rebuild, and the
    exactness of the result on a sample."""
    from benchmarks.incremental import check_exact
    from connectors.rebuild import rebuild
    from connectors.updates import update_anchors

    out = {}
    t0 = time.perf_counter()
    rebuilt, _ = rebuild(idx, open_store(engine, d, "rebuilt"))
    out["rebuild_s"] = time.perf_counter() - t0
    rebuilt.store.drop()
    print(f"  rebuild: {out['rebuild_s']:.1f} s", flush=True)
    for share, seed in ((s, 5 + j) for j, s in enumerate(a.update_shares)):
        n = int(share * a.anchors)
        img, txt = pair(n, np.arange(a.covered, a.topics), seed)
        t0 = time.perf_counter()
        res = update_anchors(idx, add=(img, txt, [AnchorPayload("new")] * n))
        key = f"add_{int(share * 100)}pct"
        out[f"{key}_s"] = time.perf_counter() - t0
        out[f"{key}_vs_rebuild"] = out[f"{key}_s"] / out["rebuild_s"]
        out[f"{key}_scanned"], out[f"{key}_touched"] = res.items_scanned, res.items_touched
        out[f"{key}_max_err"] = check_exact(idx, a.exact_sample)
        print(f"  {key}: {out[f'{key}_s']:.1f} s ({out[f'{key}_vs_rebuild']:.3f} of the "
              f"rebuild), {res.items_scanned} read, {res.items_touched} touched, exact "
              f"{out[f'{key}_max_err']}", flush=True)
    return out


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
    ap.add_argument("--recipes", default="tuned,asif")
    ap.add_argument("--directions", default="t2i,i2t")
    ap.add_argument("--candidate-keep", type=int, default=0)
    ap.add_argument("--sweep", default="250,500,1000,2000,4000",
                    help="candidate counts whose recall and latency are also measured")
    ap.add_argument("--fold-sweep", default="100,300,1000,3000",
                    help="re-scoring counts C of the folded ranking (the plain top C plus each "
                         "hit's fold value) whose recall and latency are also measured")
    ap.add_argument("--topics", type=int, default=20)
    ap.add_argument("--no-peer", dest="peer", action="store_false")
    ap.add_argument("--updates", action="store_true",
                    help="also +1%% / +10%% new-domain anchors against a rebuild")
    ap.add_argument("--update-shares", default="0.01,0.10",
                    help="new anchors per update, as shares of the anchors")
    ap.add_argument("--exact-sample", type=int, default=1000)
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of --out for other (engine, items, recipe, direction)")
    ap.add_argument("--out", default="runs/bench/scale_search.json")
    a = ap.parse_args(argv)
    a.sweep = [int(x) for x in a.sweep.split(",") if x]
    a.fold_sweep = [int(x) for x in a.fold_sweep.split(",") if x]
    a.update_shares = [float(x) for x in a.update_shares.split(",") if x]
    rng = np.random.default_rng(0)
    a.centres = rng.standard_normal((a.topics, a.dim)).astype(np.float32)
    a.centres /= np.linalg.norm(a.centres, axis=1, keepdims=True)
    a.covered = a.topics - max(1, a.topics // 10)
    a.noise = 1.0 / np.sqrt(a.dim)
    root = Path(tempfile.mkdtemp(prefix="asif-scale-"))
    rows = []
    key = ("engine", "items", "recipe", "direction")
    try:
        for n_items in (int(x) for x in a.items.split(",")):
            for engine in a.engines.split(","):
                for recipe in a.recipes.split(","):
                    for direction in a.directions.split(","):
                        print(f"{engine}: {n_items} items, {recipe}, {direction}", flush=True)
                        row = run(engine, n_items, recipe, direction, a, root)
                        print({k: (round(v, 3) if isinstance(v, float) else v)
                               for k, v in row.items()}, flush=True)
                        rows.append(row)
                        _save(rows, a, key)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(_save(rows, a, key))


def _save(rows, a, key) -> str:
    import json

    out = list(rows)
    if a.append and Path(a.out).is_file():
        fresh = {tuple(r[k] for k in key) for r in rows}
        out += [r for r in json.loads(Path(a.out).read_text()).get("rows", [])
                if all(k in r for k in key) and tuple(r[k] for k in key) not in fresh]
    out.sort(key=lambda r: tuple(str(r[k]) for k in key))
    cols = ["engine", "items", "recipe", "direction", "default_p50_ms", "default_recall",
            "plain_p50_ms", "plain_recall", "qbnorm_cost", "exact_p50_ms", "exact_recall",
            "exact_plain_p50_ms", "qbnorm_cost_exact",
            "rerank_p50_ms", "dense_p50_ms", "candidates", "bytes_per_item", "fold_items_s",
            "write_items_s", "rebuild_s", "add_1pct_s", "add_1pct_vs_rebuild", "add_1pct_touched",
            "add_10pct_s", "add_10pct_vs_rebuild"]
    md = table(out, cols)
    sweep = [{**{k: r[k] for k in key}, "candidate_keep": r.get("candidate_keep"),
              "candidates": int(c), "p50_ms": v["p50_ms"], "recall_at_10": v["recall"]}
             for r in out for c, v in sorted((r.get("sweep") or {}).items(), key=lambda x: int(x[0]))]
    if sweep:
        md += "\n\nCandidate count against recall@10 (vs the exact ranking) and p50:\n\n" + \
            table(sweep, list(sweep[0]))
    fs = [{**{k: r[k] for k in key}, "fold_candidates": int(c), "p50_ms": v["p50_ms"],
           "plain_p50_ms": r.get("plain_p50_ms"), "exact_fold_p50_ms": r.get("default_p50_ms"),
           "recall_at_10": v["recall"]}
          for r in out for c, v in sorted((r.get("fold_rescore_sweep") or {}).items(),
                                          key=lambda x: int(x[0]))]
    if fs:
        md += ("\n\nFolded QB-Norm re-scoring the plain top C (each hit's stored fold value "
               "added) against the whole-collection fold: recall@10 vs the exact normalised "
               "ranking, and p50 beside the plain and the whole-collection searches:\n\n"
               + table(fs, list(fs[0])))
    write_json({"machine": machine(), "config": {k: v for k, v in vars(a).items()
                                                 if k not in ("centres", "noise", "covered")},
                "rows": out, "markdown": md}, a.out)
    return md


if __name__ == "__main__":
    main()
