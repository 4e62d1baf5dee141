"""Distributed ingestion on Ray against the single-process pipeline, and a cost model for 10^8
images (issue 12, part 1). Run through ``python -m benchmarks.distributed --part ingest``.

Measured here: Flickr8k dev photos (224x224 JPEG) ingested into one embedded Qdrant index
with the 30,000 train pairs as anchors (k = 800), three disjoint slices of the same size:
the single-process ``ingest_items`` (the peer: one process, torch on both cores) and
``ingest_on_ray`` with 1 and 2 encode actors (Ray gives each actor one core, so one thread
each). No embedding cache anywhere: every image is decoded and encoded. Each Ray ingest
starts its own actors (models loaded), so each setting runs twice, on 64 and on all photos
of its slice: the steady rate is the difference of the two (photos over seconds), and the
start is what the short run took beyond its photos at that rate.

The cost model then predicts hours and nodes for 10^8 images from per-stage rates: the
stages run as a pipeline, so the slowest stage's total capacity sets the rate. Rates that
this machine measured are labelled so; the GPU projection rate comes from the GPU benchmark
(docs/results/topk_gpu.json); the GPU encode rate was not measured (see the markdown).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from asif_index.recipe import PUBLISHED  # the recorded figures are the published recipe's
from benchmarks.common import table

IMAGES = 10**8


def measure(per_run: int = 256, batch: int = 64) -> dict:
    import ray

    from asif_index.config import AsifSettings
    from asif_index.datasets import flickr8k, shared_data_dir
    from asif_index.encoders import image_encoder_from_spec, text_encoder_from_spec
    from benchmarks.common import flickr_anchors
    from connectors import close_embedded, open_store
    from connectors.distributed.ingest import RayIngestOptions, ingest_on_ray
    from connectors.index import Index
    from connectors.pipeline import ingest_items
    from connectors.pipeline.readers import SourceItem

    data = shared_data_dir()
    if data is None:
        raise SystemExit("no ../shared/data: nothing to measure")
    cached_img, cached_txt = AsifSettings.load().encoders()  # anchors from the cache
    _, dev, a_img, a_txt, payloads = flickr_anchors(data, cached_img, cached_txt)
    photos = sorted({r.image for r in dev})[: 3 * per_run]
    slices = [photos[i * per_run:(i + 1) * per_run] for i in range(3)]
    tmp = Path(tempfile.mkdtemp(prefix="asif-dist-"))
    s = AsifSettings(backend="qdrant", path=str(tmp / "edge"), collection="bench",
                     cache_dir=str(tmp / "cache"))
    rows = []
    try:
        idx = Index.create(open_store(s), cached_img, cached_txt, k=800, p=8.0, recipe=PUBLISHED)
        t0 = time.perf_counter()
        idx.add_anchor_embeddings(a_img, a_txt, payloads)
        anchors_s = time.perf_counter() - t0
        # the peer: encoders without a cache, as the workers have
        img = image_encoder_from_spec("default", cache=None)
        peer = Index(idx.store, idx.anchors, img, text_encoder_from_spec("default", cache=None))
        src = [SourceItem(p.name, image=p, payload={"path": str(p)}) for p in slices[0]]
        sm = ingest_items(peer, src, "image", batch_size=batch, progress=False)
        rows.append(_row("single process (torch on 2 cores)", 0, sm, sm.seconds, 0.0))
        rows[-1]["steady_images_per_s"] = rows[-1]["images_per_s"]
        write_rate = (sm.ingested + sm.updated) / max(sm.timings["write_s"], 1e-9)
        decode_rate = len(src) / max(sm.timings["decode_s"], 1e-9)
        encode_rate = len(src) / max(sm.timings["encode_s"], 1e-9)
        idx.close()
        close_embedded()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            for n_enc, part in ((1, slices[1]), (2, slices[2])):
                opts = RayIngestOptions(encoders=n_enc, batch_size=batch,
                                        checkpoint=tmp / f"ck{n_enc}")
                warm = [SourceItem(p.name, image=p, payload={"path": str(p)})
                        for p in part[:batch]]
                short = ingest_on_ray(s, warm, "image", opts, source_name=f"warm{n_enc}",
                                      progress=False)
                src = [SourceItem(p.name, image=p, payload={"path": str(p)}) for p in part]
                sm = ingest_on_ray(s, src, "image", opts, source_name=f"run{n_enc}",
                                   progress=False)
                rate = (len(src) - len(warm)) / max(sm.seconds - short.seconds, 1e-9)
                row = _row(f"Ray, {n_enc} encode actor{'s' if n_enc > 1 else ''}", n_enc, sm,
                           sm.seconds, short.seconds - len(warm) / rate)
                row["steady_images_per_s"] = rate
                rows.append(row)
                print(rows[-1], flush=True)
        finally:
            ray.shutdown()
    finally:
        close_embedded()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "anchors": len(a_img), "anchors_s": anchors_s,
            "per_run": per_run, "batch": batch,
            "rates": {"decode_per_core": decode_rate, "encode_cpu_2cores": encode_rate,
                      "write_embedded_qdrant": write_rate}}


def _row(setting: str, encoders: int, sm, wall: float, start: float) -> dict:
    n = sm.ingested + sm.updated
    return {"setting": setting, "encoders": encoders, "images": n, "wall_s": wall,
            "images_per_s": n / wall if wall else 0.0, "start_s": start,
            "encode_share": sm.timings["encode_s"] / max(sum(sm.timings.values()), 1e-9),
            "skipped": len(sm.skipped)}


def gpu_projection_rate(anchors: int, path: str = "docs/results/topk_gpu.json"
                        ) -> tuple[float, str]:
    """Measured queries/s of the GPU top-k at the largest batch, for the anchor count nearest
    ``anchors`` (d = 768)."""
    doc = json.loads(Path(path).read_text())
    rows = [r for r in doc["rows"] if r["d"] == 768 and r["batch"] >= 1024]
    best = min(rows, key=lambda r: (abs(np.log10(r["N"]) - np.log10(anchors)), -r["asif_qps"]))
    return float(best["asif_qps"]), f"{doc['machine']['gpu']}, N={best['N']:.0e}, d=768"


ASSUMED_GPU_ENCODE = 10000.0  # images/s per GPU, until benchmarks/encode_rate.py ran on one


def gpu_encode_rate(given: float | None = None,
                    path: str = "docs/results/encode_rate_gpu.json") -> tuple[float, str]:
    """(images/s per GPU, where it comes from): ``given``, else the encoder path measured by
    ``benchmarks.encode_rate`` on a GPU, else the stated assumption."""
    if given is not None:
        return given, "given on the command line"
    f = Path(path)
    if f.is_file():
        doc = json.loads(f.read_text())
        rows = [r for r in doc["rows"] if r["device"].startswith("cuda")]
        if rows:
            return float(rows[-1]["images_per_s"]), f"measured ({doc['machine'].get('gpu')})"
    return ASSUMED_GPU_ENCODE, "ASSUMED, not measured (no GPU run of benchmarks.encode_rate yet)"


def cost_model(rates: dict, gpu_encode_rate: float, anchors: int = 10**6,
               targets_h: tuple[float, ...] = (24, 6, 1), cpus_per_gpu: int = 8
               ) -> tuple[list[dict], dict]:
    """For each target in hours: the GPU nodes (each with ``cpus_per_gpu`` decode cores) and
    database nodes that ingest ``IMAGES`` images in time. The stages run as a pipeline, so
    each must carry the whole rate: GPUs = rate over the slowest per-GPU stage (decode on
    its cores, encode, project), database nodes = rate over one node's write rate."""
    import math

    proj, proj_src = gpu_projection_rate(anchors)
    per_gpu = {"decode": rates["decode_per_core"] * cpus_per_gpu, "encode": gpu_encode_rate,
               "project": proj}
    bound = min(per_gpu, key=per_gpu.get)
    out = []
    for t in targets_h:
        need = IMAGES / (t * 3600)
        g = math.ceil(need / per_gpu[bound])
        d = math.ceil(need / rates["write_embedded_qdrant"])
        out.append({"target_hours": t, "images_per_s_needed": need, "gpu_nodes": g,
                    "gpu_bound_by": bound, "db_nodes": d,
                    "hours_with_them": IMAGES / min(g * per_gpu[bound],
                                                   d * rates["write_embedded_qdrant"]) / 3600})
    return out, {"gpu_projection_q_s": proj, "gpu_projection_source": proj_src,
                 "per_gpu_node": per_gpu}


def run(out: str, per_run: int, encode_rate: float | None) -> dict:
    m = measure(per_run)
    rate, rate_src = gpu_encode_rate(encode_rate)
    model, src = cost_model(m["rates"], rate)
    md = table(m["rows"], ["setting", "images", "wall_s", "steady_images_per_s", "start_s",
                           "encode_share", "skipped"])
    r = m["rates"]
    md += ("\n\nRates measured in the single-process run (per item): decode "
           f"{r['decode_per_core']:.0f}/s on one core, encode {r['encode_cpu_2cores']:.1f}/s on "
           f"2 cores, write {r['write_embedded_qdrant']:.0f}/s into the embedded Qdrant.\n\n"
           f"Cost model for {IMAGES:.0e} images (k = 800, 10^6 anchors): GPU projection "
           f"{src['gpu_projection_q_s']:.0f} q/s per GPU measured ({src['gpu_projection_source']}"
           f"); GPU encode {rate:.0f} images/s per GPU, {rate_src}; decode at this machine's "
           "per-core rate, 8 "
           "cores per GPU; write at this machine's embedded-Qdrant rate per database node "
           "(a server node on real hardware is faster: a lower bound).\n\n")
    md += table(model, ["target_hours", "images_per_s_needed", "gpu_nodes", "gpu_bound_by",
                        "db_nodes", "hours_with_them"])
    return {"measured": m, "cost_model": model, "cost_inputs": {**src,
            "gpu_encode_rate": rate, "gpu_encode_rate_source": rate_src, "images": IMAGES},
            "markdown": md}
