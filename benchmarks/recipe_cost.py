"""What the default recipe and encoders cost against the published recipe and the light
encoder, through a real engine.

    python -m benchmarks.recipe_cost [--queries 500] [--backend qdrant]
        [--configs light:asif,light:tuned,default:tuned]

Each configuration is an image encoder spec and a recipe (``ENCODER:RECIPE``). The tuned
recipe (``asif_index.recipe.TUNED``: image side k=3200, text side p=4, cross-modal results
normalised by a query bank) and the default image encoder (the EfficientNet-Lite0+1+2
ensemble) win on quality (docs/evaluation.md); this measures what they cost, the published
recipe with the light encoder (Lite0) measured in the same run on the same data:
Flickr8k's 30,000 train pairs as anchors, the 1,000 dev photos and 5,000 dev captions stored
in one embedded index (Qdrant Edge by default), embeddings from the encoders' cache.

* encoding: photos per second through the image encoder from the JPEG files, its cache
  left out (what ingestion pays before projection), and the raw embedding's bytes per photo
  (float32, stored for exact anchor updates);
* storage: stored entries per photo and per caption, and the database folder's bytes;
* projection: the items' projection rate (what ingestion adds to encoding);
* search: latency of ``Index.search`` per query (projection, database, re-ranking; the
  query's embedding is cached so the encoder is left out), p50 and p95, for captions over
  the photos and photos over the captions, and R@10 of the same queries through the
  database, which for the tuned recipe must match docs/evaluation.md's exact figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import flickr_bench_setup, machine, table, write_json
from benchmarks.flickr_db import make_store
from benchmarks.scale import du_mb


def encode_rate(img_enc, photos: list, n: int = 96) -> float:
    """Photos per second through ``img_enc`` with its embedding cache left out."""
    caches = [img_enc] + [m for m, _ in getattr(img_enc, "members", [])]
    kept = [(e, e.cache) for e in caches]
    for e in caches:
        e.cache = None
    try:
        img_enc.encode(photos[:8])  # warm: the first batch pays the model's first call
        t0 = time.perf_counter()
        img_enc.encode(photos[:n])
        return n / (time.perf_counter() - t0)
    finally:
        for e, c in kept:
            e.cache = c


def measure(config: str, setup, kind: str, tmp: Path, n_queries: int, seed: int = 0
            ) -> list[dict]:
    from asif_index.recipe import Recipe
    from connectors.index import Index

    img_enc, txt_enc, _train, dev, a_img, a_txt, payloads = setup
    spec, _, recipe_text = config.partition(":")
    recipe = Recipe.parse(recipe_text)
    name = "".join(c if c.isalnum() else "_" for c in config)
    store = make_store(kind, tmp, name)
    idx = Index.create(store, img_enc, txt_enc, k=800, p=8.0, recipe=recipe)
    idx.add_anchor_embeddings(a_img, a_txt, payloads)
    photos = sorted({r.image for r in dev})
    photo_of = {p: i for i, p in enumerate(photos)}
    captions = [r.caption for r in dev]
    caption_photo = np.array([photo_of[r.image] for r in dev])
    e_img, e_txt = img_enc.encode(photos), txt_enc.encode(captions)
    proj = {}
    for mod, emb, keys in (("image", e_img, [p.name for p in photos]),
                           ("text", e_txt, [f"cap{i}" for i in range(len(captions))])):
        t0 = time.perf_counter()
        recs, _ = idx.records(emb, mod, keys, [{"i": i} for i in range(len(keys))])
        proj[mod] = len(recs) / (time.perf_counter() - t0)
        idx.write(recs)
    nnz = {m: float(np.mean([len(r.sparse_indices) for b in store.scroll_items(
        version=idx.version) for r in b if r.modality == m])) for m in ("image", "text")}
    size = du_mb(tmp / f"q-{name}") if kind == "qdrant" else None  # its folder
    enc_rate = encode_rate(img_enc, photos)
    rng = np.random.default_rng(seed)
    cap_q = rng.choice(len(captions), min(n_queries, len(captions)), replace=False)
    img_q = rng.choice(len(photos), min(n_queries, len(photos)), replace=False)
    rows = []
    settings = [("default", None)] + ([("plain", False)] if recipe.qbnorm else [])
    for label, qb in settings:
        for direction, queries, target in (("T2I", cap_q, "image"), ("I2T", img_q, "text")):
            lat, found = [], []
            for q in queries:
                kw = {"text": captions[q]} if direction == "T2I" else {"image": photos[q]}
                t0 = time.perf_counter()
                res = idx.search_result(limit=10, filter={"modality": target}, qbnorm=qb, **kw)
                lat.append(time.perf_counter() - t0)
                got = [h.payload["i"] for h in res.hits]
                found.append(caption_photo[q] in got if direction == "T2I"
                             else bool(set(np.flatnonzero(caption_photo == q)) & set(got)))
            rows.append({
                "image_encoder": spec, "recipe": recipe_text, "search": label,
                "direction": direction,
                "queries": len(queries), "R@10": float(np.mean(found)),
                "p50_ms": 1000 * float(np.percentile(lat, 50)),
                "p95_ms": 1000 * float(np.percentile(lat, 95)),
                "reranked": res.qbnorm is not None,
                "entries_per_photo": nnz["image"], "entries_per_caption": nnz["text"],
                "db_MB": size, "raw_bytes_per_photo": 4 * img_enc.dim,
                "encode_photos_per_s": enc_rate,
                "project_photos_per_s": proj["image"], "project_captions_per_s": proj["text"]})
            print(table([rows[-1]], list(rows[-1])), flush=True)
    store.close()
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", type=int, default=500, help="queries per direction")
    ap.add_argument("--backend", default="qdrant", choices=["qdrant", "memory"])
    ap.add_argument("--configs", default="light:asif,light:tuned,default:tuned",
                    help="ENCODER:RECIPE pairs, comma-separated (a recipe with settings "
                         "takes ';' between them: default:tuned;hub=10)")
    ap.add_argument("--out", default="runs/bench/recipe_cost.json")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of --out for configurations this run does not measure")
    a = ap.parse_args(argv)
    configs = [c.strip().replace(";", ",") for c in a.configs.split(",") if c.strip()]
    for c in configs:
        if ":" not in c:
            ap.error(f"--configs: '{c}' is not ENCODER:RECIPE (e.g. light:tuned)")
    tmp = Path(tempfile.mkdtemp(prefix="asif-recipe-cost-"))
    rows, setups = [], {}
    for config in configs:
        spec = config.partition(":")[0]
        if spec not in setups:
            setups.clear()  # one encoder set's anchor embeddings in memory at a time
            setups[spec] = flickr_bench_setup(spec)
        if setups[spec] is None:
            return
        rows += measure(config, setups[spec], a.backend, tmp, a.queries)
    if a.append and Path(a.out).is_file():
        import json

        mine = {(r["image_encoder"], r["recipe"]) for r in rows}
        rows = [r for r in json.loads(Path(a.out).read_text()).get("rows", [])
                if (r.get("image_encoder"), r.get("recipe")) not in mine] + rows
    md = table(rows, list(rows[-1]))
    print("\n" + md)
    write_json({"machine": machine(), "backend": a.backend, "configs": configs, "rows": rows,
                "markdown": md}, a.out)


if __name__ == "__main__":
    main()
