"""Past one machine on Ray (issue 12): sharded anchors, and distributed ingestion.

    python -m benchmarks.distributed [--part all|shards|ingest] [--anchors 30000] [--dim 1280]
        [--queries 512] [--images 256] [--gpu-encode-rate R]

Part ``ingest`` (benchmarks/distributed_ingest.py): Flickr8k photos through the single-process
pipeline and through Ray with 1 and 2 encode actors, then a cost model for 10^8 images;
writes docs/results/distributed_ingest.json.

Part ``shards``:
Relative vectors of the same queries from one in-process TopKEngine and from 1, 2 and 4 shard
actors on a local Ray (this machine's cores). It checks that every sharded row equals the
single engine's, and prints queries per second. On one machine sharding buys nothing but
memory per process (each shard holds 1/S of the anchors); the figure that matters on a
cluster is the merge's overhead, which these rows show. Writes docs/results/distributed.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine, table, write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", type=int, default=30000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--out", default="docs/results/distributed.json")
    ap.add_argument("--part", choices=["all", "shards", "ingest"], default="all")
    ap.add_argument("--images", type=int, default=256, help="photos per ingest run")
    ap.add_argument("--gpu-encode-rate", type=float,
                    help="images/s per GPU for the cost model (default: docs/results/"
                         "encode_rate_gpu.json from benchmarks.encode_rate on a GPU, else an "
                         "assumed 10,000)")
    ap.add_argument("--ingest-out", default="docs/results/distributed_ingest.json")
    a = ap.parse_args()
    if a.part in ("all", "ingest"):
        from benchmarks.distributed_ingest import run

        doc = run(a.ingest_out, a.images, a.gpu_encode_rate)
        print(doc["markdown"])
        write_json({"machine": machine(), **doc}, a.ingest_out)
    if a.part in ("all", "shards"):
        shards(a)


def shards(a) -> None:
    import ray

    from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
    from connectors.distributed.sharded import ShardedProjector

    rng = np.random.default_rng(0)
    anchors = AnchorSet(AnchorManifest("i", "t", a.dim, 8))
    anchors.add(rng.standard_normal((a.anchors, a.dim)).astype(np.float32),
                rng.standard_normal((a.anchors, 8)).astype(np.float32),
                [AnchorPayload("") for _ in range(a.anchors)])
    q = rng.standard_normal((a.queries, a.dim)).astype(np.float32)
    ref = anchors.project(q, "image")
    t0 = time.perf_counter()
    for _ in range(3):
        anchors.project(q, "image")
    one = (time.perf_counter() - t0) / 3
    rows = [{"setting": "one engine, in the driver", "shards": 0,
             "q_per_s": a.queries / one, "ms_per_batch": 1000 * one, "exact": True}]
    ray.init(num_cpus=max(2, max(int(s) for s in a.shards.split(","))),
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for s in (int(x) for x in a.shards.split(",")):
            t0 = time.perf_counter()
            sp = ShardedProjector(anchors, "image", s)
            got = sp.project(q[:8])  # actors started, engines built and warmed
            start = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(3):
                got = sp.project(q)
            dt = (time.perf_counter() - t0) / 3
            exact = bool(np.array_equal(got.indices, ref.indices))
            rows.append({"setting": f"{s} shard actor{'s' if s > 1 else ''}", "shards": s,
                         "q_per_s": a.queries / dt, "ms_per_batch": 1000 * dt, "exact": exact,
                         "start_s": start})
            sp.close()
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    md = table(rows, ["setting", "q_per_s", "ms_per_batch", "exact", "start_s"])
    print(md)
    write_json({"machine": machine(), "anchors": a.anchors, "dim": a.dim, "queries": a.queries,
                "k": 800, "rows": rows, "markdown": md}, a.out)


if __name__ == "__main__":
    main()
