"""Assemble docs/benchmarks.md from the JSON files the benchmark commands wrote.

    python -m benchmarks.report [--runs runs/bench] [--out docs/benchmarks.md]

Nothing here is typed in: every table is the ``markdown`` a command produced, every plot is
drawn from its JSON, and the machine line is the one the command recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SECTIONS = [
    ("topk.json", "1. Top-k engine vs faiss IndexFlatIP and torch matmul+topk",
     "`python -m benchmarks.topk` (defaults N=1e5,1e6; d=384; k=800; batch 1,1024). q/s, higher is "
     "better; `*_vs_faiss` is the speed ratio to faiss measured in the same run; `*_agree` is the "
     "share of top-k members equal to faiss's (1 = identical sets)."),
    ("topk_grid.json", "1b. Top-k engine, wider grid (N, d, k, batch)",
     "`python -m benchmarks.topk --n 10000,100000,1000000 --d 384,768 --k 100,800,2000 "
     "--batch 1,4096 --repeat 1 --out runs/bench/topk_grid.json`. MB columns: resident anchor "
     "data plus the largest transient buffer of one search."),
    ("latency.json", "2. End-to-end query latency",
     "`python -m benchmarks.latency` (encode with MiniLM, project against 30,000 anchors, search "
     "the database; milliseconds)."),
    ("flickr_db.json", "3. Flickr8k through the databases, and ingest throughput",
     "`python -m benchmarks.flickr_db`: dev-split text-to-image recall through each database next "
     "to the in-memory exact path, then ingest throughput with an empty embedding cache next to "
     "the encoder alone."),
    ("pruning.json", "4. Query-side pruning of the sparse query",
     "`python -m benchmarks.pruning`: keep the m largest query entries; recall and latency."),
    ("quality.json", "5. Quality: anchors curve (and the k x p grid in docs/evaluation.md)",
     "`python -m benchmarks.quality` (after `asif-index eval sweep`)."),
    ("incremental.json", "Incremental anchors vs full rebuild (issue 4)",
     "`python -m benchmarks.incremental` (100k items, 30k anchors, k=800)."),
    ("faults.json", "6. Crash recovery: random SIGKILLs of ingest and anchor updates",
     "`python -m benchmarks.faults` (per embedded engine and operation: 20 trials, each killing "
     "a worker process group at a random moment of its work, resuming, and reading every stored "
     "point back against the exact projection; 1,000 anchors, 400 items in both modalities, 60 "
     "new anchors per update). `killed_mid_run`: trials whose kill landed before the work "
     "ended; `work_s`: the uninterrupted work time the kill moments were drawn from."),
    ("scale_search.json", "7b. Search and updates at scale: folded QB-Norm, two stages, "
     "bounded updates (issue 25)",
     "`python -m benchmarks.scale` (synthetic clustered embeddings, d = 384 both modalities, "
     "20 topics, 30,000 anchors, the `tuned` recipe: image items k = 3,200, QB-Norm T = 0.05 "
     "folded into the items; 200 queries (t2i: text over an image collection; i2t: image over "
     "texts), each through `Index.search_vectors`, single client, projection excluded). "
     "`default`: what a search runs: QB-Norm folded, and two stages where the index has "
     "candidate vectors (`candidate_keep` entries per item; 0: none, one exact stage) with the "
     "candidate count chosen by size; `plain`: the same without QB-Norm (`qbnorm_cost` = "
     "default / plain p50); `exact` / `exact_plain`: one exact sparse stage with / without the "
     "fold (`qbnorm_cost_exact`); `rerank`: the path before folding (plain top 100 read back, "
     "rescored per query against the bank); `dense`: the peer, a 384-d HNSW collection of the "
     "same items on the same engine. Recalls are against the exact in-memory ranking (the "
     "normalised one for `default`, `exact` and `rerank`; ties within 1e-5 count as found). "
     "`*_items_s`: items per second of projection, fold and write. `add_*`: +1% / +10% "
     "new-domain anchors against a rebuild into a new index, exact on a 1,000-item sample. "
     "The second table sweeps the two-stage candidate count, the third re-scores the plain top "
     "C by each hit's stored fold instead of folding over the whole collection."),
    ("scale_model.json", "7c. A cost model for 10^6-10^8 items from measured parts",
     "`python -m benchmarks.scale_model docs/results/scale_search.json`: each latency of section "
     "7b fitted as p50 = a N^b through the sizes it was measured at (named in `fitted_on`; "
     "`exponent` b), disk as the largest run's bytes per item times N, build time (project + "
     "fold + write) at its measured rates; a prediction, not a measurement, for sizes whose "
     "disk (about 52 KB per tuned image item) or hours this 2-core machine does not have."),
    ("scale.json", "7. Both embedded engines at scale (the benchmark before issue 25)",
     "Recorded by the earlier version of `python -m benchmarks.scale` (synthetic clustered embeddings, d=384, 30,000 anchors, "
     "k=800; every write through `Index.write`; 200 queries; recall@10 against the exact "
     "in-memory top-10, ties not counted as misses; `bytes_per_item` is the whole database "
     "folder over the items, fixed overheads such as Qdrant's preallocated WAL included; "
     "`rss_mb` is this process plus Milvus Lite's server process; `reopen_s` opens the index "
     "reading its anchors from the database, `reopen_cached_s` from the local anchor copy; "
     "`incremental_1pct_s`: 1% new-domain anchors added live, next to `rebuild_s`, a full "
     "rebuild into a new index on the same engine)."),
    ("sparse_options.json", "8. Sparse-vector options of the engines, per search direction",
     "`python -m benchmarks.sparse_options` (Flickr8k: 30,000 train pairs as anchors, the 1,000 "
     "dev images and 5,000 captions as items; recall@10 against the exact in-memory top-10 of "
     "the full query, ties not counted as misses; p50 of the database search alone)."),
]
SECTIONS.append(
    ("service.json", "9. The HTTP service under load",
     "`python -m benchmarks.service` (loopback; uvicorn in one process, httpx client threads in "
     "another; each request a full text search: MiniLM encode, projection against 30,000 "
     "anchors, database search; 10 s per phase; the last row is up to 60 s of load while 1% "
     "new anchors are added live through the same index, `update_s` the whole update, "
     "`versions_seen` the anchor versions the answers came from)."))
SECTIONS += [
    ("service_update_tuned_before.json", "9b. Searches during a live update, tuned default: "
     "before the fix",
     "`python -m benchmarks.service --items 20000 --clients 1,10 --seconds 8 --update-seconds "
     "90 --engines qdrant-edge --recipe tuned --item-modality image` at the commit before the "
     "fix (issue 24): photos as items, so every text search is cross-modal and the tuned "
     "default re-ranks its top 100 with the query bank; 300 new anchors (1%) added live. "
     "Once the update had moved an item's head to V+1, a reader pinned at V found the item's "
     "V point by scanning the collection, once per re-ranked candidate: `errors` are the "
     "client's 60 s timeouts."),
    ("service_update_tuned.json", "9c. Searches during a live update, tuned default: after",
     "The same command with `--update-seconds 300`, at 20,000 items and at 5,000 (where the "
     "load lasts the whole update, the switch to V+1 and its query-bank build included: "
     "`versions_seen` 1,2). Candidates' points at the pinned version come from one "
     "filtered read (`points_at`), and V+1 is adopted only once its engines and query banks "
     "are built. `p99_vs_idle`: the during-update p99 over the idle p99 at the same 10 "
     "clients of the same run (target <= 2)."),
    ("service_tuned.json", "9d. Where a service search's time goes, tuned default",
     "`python -m benchmarks.service --items 100000 --clients 1,8 --engines qdrant-edge "
     "--recipe tuned --item-modality image --no-update` (10^5 synthetic 1,280-d photos, "
     "text queries through MiniLM, a new text every request so no answer comes from a cache; "
     "QB-Norm folded, one exact stage). `server_p50_ms` and the stage columns are the p50s of "
     "the service's own Server-Timing header (encode: MiniLM; project: the query against "
     "30,000 anchors; search: the database); the rest of `p50_ms` is HTTP and the client."),
    ("topk_gpu.json", "10. Top-k engine on a GPU vs torch",
     "`bash benchmarks/gpu_check.sh` on a lent GPU (`python -m benchmarks.topk --device cuda`: "
     "k=800; inputs and outputs are device tensors; `asif`: the fused fp16 selection with fp32 "
     "rescoring, certified exact, `fallback` rows recomputed; `torch32` / `torch16`: matmul + "
     "`torch.topk` in fp32 (exact) / fp16 (approximate, `torch16_recall`); `gemm16`: the fp16 "
     "matmul alone; `bound`: what the measured fp16 GEMM rate allows for N x d; "
     "`asif_peak_MB`: GPU memory one search allocates beyond the resident anchors). The targets "
     "of issue 8 follow the table as PASS / MISS lines."),
    ("topk_gpu_tiles.json", "10b. The fused kernel's tile shapes and epilogues, whole search",
     "`python -m benchmarks.topk --device cuda --sweep` (N=1e6, d=768, k=800)."),
    ("select_kernels.json", "10c. Where one GPU search's time goes",
     "`python -m benchmarks.select_kernels` (N=1e6, d=768, k=800; medians of CUDA-event "
     "timings; each stage alone; the fused kernel's variants against cuBLAS's fp16 GEMM of the "
     "same shape)."),
]
SECTIONS.append(
    ("recipe_levers.json", "11. Recipe levers on the dev data, built into the index or not",
     "`python -m benchmarks.recipe_levers` (issue 13's levers with the inputs and score of "
     "`asif-index eval sweep`: 30,000 Flickr8k train pairs as anchors; CIFAR-10 test zero-shot, "
     "5 templates averaged; Flickr8k dev R@10 both ways; score = CIFAR-10 + mean R@10; "
     "`d_*`: change against the published row; the module's docstring gives each lever's "
     "source). Per-modality k and p are options of the index today; the other levers are "
     "measured here first."))
SECTIONS.append(
    ("distributed.json", "12. Anchors sharded across Ray actors",
     "`python -m benchmarks.distributed` (issue 12, part 2: random anchors, k = 800, a local "
     "Ray on this machine's cores; `exact`: every sharded row equals the single engine's; "
     "`start_s`: actors started and engines warmed). On one machine sharding only splits the "
     "anchor matrix's memory across processes (what lets an anchor set larger than one GPU "
     "run at all). The object-store round trip and the merge cost less than the run-to-run "
     "spread of this shared 2-core machine (an earlier run gave 732 / 493 / 549 / 474 q/s for "
     "the same four rows); more shards than cores lose to contention. Per-GPU shards on a "
     "cluster are not measured."))
SECTIONS.append(
    ("distributed_ingest.json", "12b. Distributed ingestion on Ray, and a cost model for 10^8 "
     "images",
     "`python -m benchmarks.distributed --part ingest` (issue 12, part 1: Flickr8k dev photos, "
     "224x224 JPEG, into one embedded Qdrant index with the 30,000 train pairs as anchors, "
     "k = 800; no embedding cache; three disjoint slices). The peer is the single-process "
     "`ingest_items` in the same run. Each Ray run starts its own actors, so each setting runs "
     "on 64 and on all photos of its slice: `steady_images_per_s` is the difference of the two, "
     "`start_s` the rest of the short run (actors started, models loaded). Every setting is "
     "bound by the same 2 cores, so the steady rates match: on this machine Ray adds its start "
     "per run and no measurable steady cost, and a second encode actor has no core to use. "
     "`encode_share` sums worker-seconds. The cost model's assumptions are listed under it and "
     "in docs/deployment.md."))
SECTIONS.append(
    ("recipe_cost.json", "13. What the defaults cost: recipes and image encoders side by side",
     "`python -m benchmarks.recipe_cost` (Flickr8k's 30,000 train pairs as anchors, the 1,000 "
     "dev photos and 5,000 dev captions stored in one embedded Qdrant (Qdrant Edge) index per "
     "configuration, k = 800, p = 8; each configuration an image encoder (`light`: "
     "EfficientNet-Lite0; `default`: the Lite0+Lite1+Lite2 ensemble) and a recipe (`asif`, the "
     "published one; `tuned`, the default); 500 seeded queries per direction through "
     "`Index.search` with a `modality` filter, the query embedding cached so the encoder is "
     "left out of `p50_ms` / `p95_ms`; `search`: `default` is what the index does unasked "
     "(tuned: QB-Norm folded into the stored vectors), `plain` the same recipe without it; "
     "`entries_per_*`: stored non-zeros per item; `db_MB`: the database folder; "
     "`raw_bytes_per_photo`: the float32 raw embedding each photo keeps for exact anchor "
     "updates (`--raw-dtype float16` halves it); `encode_photos_per_s`: the image encoder from "
     "the JPEG files with its cache left out, on this machine's CPU; `project_*_per_s`: the "
     "items' projection rate). R@10 over these seeded queries is noisier than "
     "docs/evaluation.md's over all dev queries. `search --no-qbnorm` / `\"qbnorm\": false` "
     "skip the normalisation; `--image-encoder light` trades the ensemble's quality for 4-6x "
     "its encode rate and a third of its raw bytes. This run had the test suite beside it at "
     "the lowest priority, so its latencies read high; compare rows, not runs."))
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"  # JSON kept with the docs


def previous_sections(md: Path) -> dict[str, list[str]]:
    """The body of each '## ' section of the last published page, by title: a section whose
    JSON is not on this machine keeps its published figures instead of being blanked."""
    out: dict[str, list[str]] = {}
    if not md.is_file():
        return out
    title = None
    for line in md.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            out[title] = []
        elif title is not None:
            out[title].append(line)
    return out


def plot_topk(doc: dict, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, b in zip(axes[0], batches):
        sub = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["N"])
        xs = [r["N"] for r in sub]
        for key, lbl in [("faiss_qps", "faiss IndexFlatIP"), ("torch_qps", "torch matmul+topk"),
                         ("asif_fp32_qps", "asif fp32"), ("asif_bf16_qps", "asif bf16 (certified)")]:
            if key in sub[0]:
                ax.plot(xs, [r[key] for r in sub], marker="o", label=lbl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("anchors N")
        ax.set_ylabel("queries / s")
        ax.set_title(f"exact top-{sub[0]['k']}, d={sub[0]['d']}, batch {b}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_rows(doc: dict, fname: str, out: Path) -> Path | None:
    """One small figure per remaining section, drawn from its JSON rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc.get("rows") or []
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if fname == "pruning.json":
        for b in sorted({r["backend"] for r in rows}):
            sub = [r for r in rows if r["backend"] == b]
            ax.plot([r["keep"] for r in sub], [r["top10_overlap_vs_full"] for r in sub], "o-",
                    label=f"{b}: top-10 overlap with k=800")
            ax.plot([r["keep"] for r in sub], [r["R@10"] for r in sub], "s--", label=f"{b}: R@10")
            ax2 = ax.twinx()
            ax2.plot([r["keep"] for r in sub], [r["p50_ms"] for r in sub], "^:", c="grey",
                     label=f"{b}: p50 ms")
            ax2.set_ylabel("p50 search latency (ms)")
        ax.set_xscale("log")
        ax.set_xlabel("query entries kept")
        ax.set_title("Query-side pruning")
    elif fname == "incremental.json":
        labels = [f"{r['scenario']}\n{r['added']}" for r in rows]
        ax.bar(range(len(rows)), [r["incremental_s"] for r in rows], label="incremental")
        ax.axhline(rows[0]["rebuild_s"], c="r", ls="--", label="full rebuild")
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("seconds")
        for i, r in enumerate(rows):
            ax.text(i, r["incremental_s"], f"{100 * r['touched_share']:.0f}% items", ha="center",
                    va="bottom", fontsize=8)
        ax.set_title("Adding anchors: incremental vs rebuild")
    elif fname == "latency.json":
        labels = [f"{r['backend']}\n{r['clients']} client(s)" for r in rows]
        bottom = np.zeros(len(rows))
        for stage in ("encode", "project", "search"):
            v = np.array([r[f"{stage}_p50_ms"] for r in rows])
            ax.bar(range(len(rows)), v, bottom=bottom, label=f"{stage} p50")
            bottom += v
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title("End-to-end query latency by stage")
    elif fname == "scale.json":
        plt.close(fig)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for eng in sorted({r["engine"] for r in rows}):
            sub = sorted((r for r in rows if r["engine"] == eng), key=lambda r: r["items"])
            xs = [r["items"] for r in sub]
            axes[0].plot(xs, [r["p50_ms"] for r in sub], "o-", label=f"{eng} p50")
            axes[0].plot(xs, [r["p99_ms"] for r in sub], "s--", label=f"{eng} p99")
            axes[1].plot(xs, [r["bytes_per_item"] for r in sub], "o-", label=eng)
        for ax_, yl in zip(axes, ("search latency, 1 client (ms)", "bytes per item on disk")):
            ax_.set_xscale("log")
            ax_.set_xlabel("items")
            ax_.set_ylabel(yl)
            ax_.legend(fontsize=7)
        axes[0].set_title("Search latency vs items")
        axes[1].set_title("Size vs items")
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out
    else:
        plt.close(fig)
        return None
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--out", default="docs/benchmarks.md")
    a = ap.parse_args(argv)
    runs = Path(a.runs)
    out = Path(a.out)
    img = out.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmarks", "",
             "Each section is regenerated by `python -m benchmarks.report` from the JSON written by "
             "the command it names (kept in docs/results/; a section whose JSON is absent keeps its "
             "last published figures). Sections 10-10c ran on a lent NVIDIA H200 (2026-11-26); "
             "every other section on the CPU machine its machine line names.", ""]
    before = previous_sections(out)
    for fname, title, how in SECTIONS:
        p = runs / fname
        if not p.is_file() and (RESULTS / fname).is_file():
            p = RESULTS / fname
        if not p.is_file():
            old = before.get(title)
            lines += [f"## {title}"] + (old if old else ["", how, "", "_Not run yet._", ""])
            continue
        lines += [f"## {title}", "", how, ""]
        doc = json.loads(p.read_text())
        m = doc.get("machine", {})
        lines += [f"Machine: {m.get('cpu')} ({m.get('cores')} cores), GPU: {m.get('gpu') or 'none'}, "
                  f"torch {m.get('torch')}.", ""]
        if fname == "incremental.json":
            lines += [f"Initial build {doc['initial_build_s']:.1f} s; full rebuild "
                      f"{doc['rebuild_s']:.1f} s.", ""]
        lines += [doc.get("markdown", ""), ""]
        if doc.get("note"):
            lines += [f"Note: {doc['note']}.", ""]
        if fname == "topk_gpu.json":
            exact = [t for t in doc["targets"] if t.endswith("exact top-k")]
            lines += [line for line in doc["targets"] if not line.endswith("exact top-k")]
            lines += ["", f"Exact top-k (same k-th value and members as torch fp32): "
                      f"{sum(t.startswith('PASS') for t in exact)} of {len(exact)} rows.", ""]
        if fname == "recipe_levers.json":
            lines += [f"{doc['configurations']} configurations; best by score: {doc['best']}.",
                      ""]
        if fname == "flickr_db.json":
            lines += [doc.get("throughput_markdown", ""), ""]
        if fname == "sparse_options.json":
            lines += [f"Cheapest setting keeping recall@10 >= 0.99 in every direction: "
                      f"{doc.get('chosen')}.", ""]
        if fname == "pruning.json":
            lines += [f"Smallest query size losing < 1% of Recall@10 (relative): {doc['chosen']}; "
                      "it is the default `query_keep` of the CLI (the Python `Index` sends all k "
                      "unless told otherwise, so its results stay exact).", ""]
        pic = plot_rows(doc, fname, img / fname.replace(".json", ".png"))
        if pic is not None:
            lines += [f"![{fname}]({pic.relative_to(out.parent)})", ""]
        if fname == "topk.json":
            pic = plot_topk(doc, img / "topk.png")
            lines += [f"![top-k engine]({pic.relative_to(out.parent)})", ""]
        if fname == "quality.json":
            for key in ("curve_plot", "grid_plot"):
                if key in doc:
                    lines += [f"![{key}]({Path(doc[key]).relative_to(out.parent)})", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
