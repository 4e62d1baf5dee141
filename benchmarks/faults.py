"""Random-kill trials on the embedded engines: is anything lost, duplicated or stale?

For each engine and operation, each trial copies a prepared database, starts a worker process
(its own process group, like a real CLI run), SIGKILLs the group at a random moment of its
work, runs the same operation again to completion (the resume), then reads every stored point
back and compares it with the exact in-memory projection on the live anchors:

- ingest: 400 items ingested in batches of 16 with a checkpoint; killed, then resumed;
- update: 60 new anchors (a new domain and spread ones) added to an index of 400 items;
  killed mid-update, then resumed from the journal.

lost = expected items with no visible point; duplicated = items with more than one visible
point, or points stored as more than one row; mismatched = visible vectors that differ from
the exact projection (indices, or values by more than 1e-5), or anchors not as expected.

    python -m benchmarks.faults [--trials 20] [--engines milvus-lite,qdrant-edge]

Embeddings are synthetic but deterministic (a hash of each item's text), so a trial costs
process starts and database work, not encoders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DI, DT, K = 48, 32, 40
N_ANCHORS, N_ITEMS, N_NEW = 1000, 400, 60


# ------------------------------------------------------------------- deterministic data
def _vec(text: str, dim: int, salt: str) -> np.ndarray:
    """A unit vector from a text: a topic centre (from the text's topic word) plus noise."""
    topic = text.split()[0]
    c = np.random.default_rng(int(hashlib.sha1(f"{salt}{topic}".encode()).hexdigest()[:8], 16))
    n = np.random.default_rng(int(hashlib.sha1(f"{salt}{text}".encode()).hexdigest()[:8], 16))
    v = c.standard_normal(dim) + 0.7 * n.standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _encoders():
    from asif_index.encoders.base import Encoder, sha1

    class HashEncoder(Encoder):
        def __init__(self, modality: str, dim: int) -> None:
            super().__init__(device="cpu")
            self.modality, self.dim, self.name = modality, dim, f"hash-{modality}-{dim}"

        def content_key(self, item):
            return sha1(str(item).encode())

        def _prepare(self, item, label):
            return str(item)

        def _forward(self, prepared):
            return np.stack([_vec(t, self.dim, self.modality) for t in prepared])

    return HashEncoder("image", DI), HashEncoder("text", DT)


def anchor_texts(tag: str, n: int, topics: int, offset: int = 0) -> list[str]:
    return [f"{tag}{(i % topics) + offset} pair {i}" for i in range(n)]


def item_texts() -> list[str]:
    return [f"topic{i % 25} item {i}" for i in range(N_ITEMS)]


NEW_ANCHORS = anchor_texts("topic", N_NEW // 2, 25, 0) + anchor_texts("newdomain", N_NEW // 2, 3)


def open_index(engine: str, where: Path, create: bool = False):
    from connectors import Index

    img, txt = _encoders()
    if engine == "milvus-lite":
        from connectors.milvus import MilvusStore

        store = MilvusStore("faults", uri=str(where / "f.db"), timeout=10)
    else:
        from connectors.qdrant_edge import QdrantEdgeStore

        store = QdrantEdgeStore("faults", path=str(where / "q"))
    if create:
        from asif_index.recipe import PUBLISHED  # the recorded figures: the published recipe

        return Index.create(store, img, txt, k=K, p=8.0, recipe=PUBLISHED)
    return Index.open(store, img, txt)


def _anchor_arrays(texts):
    from asif_index.anchors import AnchorPayload

    img, txt = _encoders()
    return img.encode(texts), txt.encode(texts), [AnchorPayload(t, "", "faults") for t in texts]


# ---------------------------------------------------------------------------- worker
def worker(engine: str, where: Path, op: str) -> None:
    """One CLI-like run: the operation to completion (or until killed)."""
    from connectors.pipeline import SourceItem, ingest_items
    from connectors.updates import update_anchors

    idx = open_index(engine, where)
    t0 = time.perf_counter()
    print("ready", flush=True)
    if op == "ingest":
        src = [SourceItem(key=t, image=t, text=t, payload={"t": t}) for t in item_texts()]
        ingest_items(idx, src, "both", batch_size=16, checkpoint=where / "ingest.ckpt",
                     source_name="faults", progress=False)
    else:
        a_img, a_txt, pl = _anchor_arrays(NEW_ANCHORS)
        if len(idx.anchors) < N_ANCHORS + N_NEW or idx.store.get_doc("update"):
            update_anchors(idx, add=(a_img, a_txt, pl), batch=32)
    print(f"done {time.perf_counter() - t0:.3f}", flush=True)


def prepare(engine: str, root: Path) -> dict[str, Path]:
    """Template databases: anchors only (for ingest trials), anchors + items (for updates)."""
    from connectors.pipeline import SourceItem, ingest_items

    out = {}
    for op in ("ingest", "update"):
        d = root / f"{engine}-{op}-template"
        d.mkdir(parents=True)
        idx = open_index(engine, d, create=True)
        idx.add_anchor_embeddings(*_anchor_arrays(anchor_texts("topic", N_ANCHORS, 25)))
        if op == "update":
            src = [SourceItem(key=t, image=t, text=t, payload={"t": t}) for t in item_texts()]
            ingest_items(idx, src, "both", batch_size=64, progress=False)
        idx.store.close()
        out[op] = d
    return out


def _spawn(engine: str, where: Path, op: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "benchmarks.faults", "--worker", engine,
                             str(where), op], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True,
                            cwd=str(Path(__file__).resolve().parent.parent))


def run_to_end(engine: str, where: Path, op: str) -> float:
    """-> seconds of work after the worker was ready (start-up excluded)."""
    p = _spawn(engine, where, op)
    out, err = p.communicate(timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{op} worker failed on {engine}: {err[-2000:]}")
    return float(out.split("done")[-1].split()[0])


def killed_run(engine: str, where: Path, op: str, delay: float) -> bool:
    """Start the worker, SIGKILL its process group ``delay`` s after it is ready;
    -> whether it was killed before it finished."""
    p = _spawn(engine, where, op)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.wait(60)
        raise RuntimeError(f"worker did not start: {p.stderr.read()[-2000:]}")
    time.sleep(delay)
    finished = p.poll() is not None
    if not finished:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(60)
    return not finished


# --------------------------------------------------------------------------- checking
def check(engine: str, where: Path, op: str) -> dict:
    from connectors.versioning import anchors_at

    idx = open_index(engine, where)
    store = idx.store
    man = store.read_manifest()
    live = anchors_at(store, man, man.version)
    expected_anchors = N_ANCHORS + (N_NEW if op == "update" else 0)
    bad_anchors = int(len(live) != expected_anchors or store.get_doc("update") is not None)
    texts = item_texts()
    img, txt = _encoders()
    by_item: dict[str, list] = {}
    for batch in store.scroll_items(version=man.version):
        for r in batch:
            by_item.setdefault(r.item, []).append(r)
    rows_per_point = _physical_rows(store)
    from connectors.base import item_id

    lost = dup = mismatch = 0
    for mod, enc in (("image", img), ("text", txt)):
        ids = [item_id(mod, enc.content_key(t)) for t in texts]
        fresh = live.project(enc.encode(texts), mod)
        for j, iid in enumerate(ids):
            recs = by_item.get(iid, [])
            if not recs:
                lost += 1
                continue
            if len(recs) > 1 or rows_per_point.get(recs[0].id, 1) > 1:
                dup += 1
            fi, fv = fresh.row(j)
            o = np.argsort(fi)
            r = recs[0]
            if not (np.array_equal(r.sparse_indices, fi[o]) and
                    np.allclose(r.sparse_values, fv[o], atol=1e-5)):
                mismatch += 1
    extra = len(by_item) - 2 * N_ITEMS + lost
    store.close()
    return {"lost": lost, "duplicated": dup + max(0, extra), "mismatched": mismatch + bad_anchors}


def _physical_rows(store) -> dict[str, int]:
    """Rows per logical point id (Milvus keys rows by a per-write pk; others by point id)."""
    if store.backend != "milvus":
        return {}
    counts: dict[str, int] = {}
    it = store.client.query_iterator(store.items, batch_size=1000, filter="",
                                     output_fields=["id"])
    while rows := it.next():
        for r in rows:
            counts[r["id"]] = counts.get(r["id"], 0) + 1
    it.close()
    return counts


# ------------------------------------------------------------------------------ driver
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="kills per engine and operation")
    ap.add_argument("--engines", default="milvus-lite,qdrant-edge")
    ap.add_argument("--ops", default="ingest,update")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/faults.json")
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "DIR", "OP"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker[0], Path(a.worker[1]), a.worker[2])
        return {}
    from benchmarks.common import machine, table, write_json

    rng = random.Random(a.seed)
    root = Path(tempfile.mkdtemp(prefix="asif-faults-"))
    rows = []
    try:
        for engine in a.engines.split(","):
            templates = prepare(engine, root)
            for op in a.ops.split(","):
                # the uninterrupted work time, to spread kill times over the whole run
                calib = root / f"{engine}-{op}-calib"
                shutil.copytree(templates[op], calib)
                full = run_to_end(engine, calib, op)
                totals = {"lost": 0, "duplicated": 0, "mismatched": 0}
                killed = 0
                t0 = time.perf_counter()
                for trial in range(a.trials):
                    d = root / f"{engine}-{op}-{trial}"
                    shutil.copytree(templates[op], d)
                    killed += killed_run(engine, d, op, rng.uniform(0.0, full))
                    run_to_end(engine, d, op)
                    got = check(engine, d, op)
                    for key in totals:
                        totals[key] += got[key]
                    shutil.rmtree(d, ignore_errors=True)
                row = {"engine": engine, "operation": op, "trials": a.trials,
                       "killed_mid_run": killed, **totals,
                       "work_s": round(full, 2),
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cols = ["engine", "operation", "trials", "killed_mid_run", "lost", "duplicated",
            "mismatched", "work_s", "seconds"]
    md = table(rows, cols)
    print(md)
    doc = {"machine": machine(), "rows": rows, "markdown": md,
           "sizes": {"anchors": N_ANCHORS, "items": N_ITEMS, "new_anchors": N_NEW, "k": K}}
    write_json(doc, a.out)
    return doc


if __name__ == "__main__":
    main()
