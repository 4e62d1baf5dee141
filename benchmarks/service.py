"""Load test of the HTTP service on loopback: text search at 1, 8 and 32 concurrent clients,
then 32 clients while an anchor update runs, on each embedded engine.

    python -m benchmarks.service                         # 1e5 items, 30,000 anchors, k=800
    python -m benchmarks.service --items 20000 --seconds 5 --engines qdrant-edge

The index holds synthetic clustered anchors and items (d = 384 on the text side, so the real
MiniLM encoder embeds the queries; every write through ``Index.write``). The server is
uvicorn in this process; the clients are threads in a separate process (httpx), so the load
generator does not share the server's interpreter. Each request is a full text search: encode
the query, project it against the anchors, search the database; the service's Server-Timing
header says what each of those took (``encode``/``project``/``search``/``server`` p50 columns),
so the rest of the client's p50 is HTTP and the client. The update phase adds 1% new
anchors through the same ``Index`` the server uses, exactly as an anchors job does, and
records which anchor versions the responses came from.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from asif_index.recipe import RECIPES
from benchmarks.common import machine, table, write_json

QUERIES = ["a dog running on the grass", "two people walking on a beach", "a red car in the city",
           "children playing football", "a cat sleeping on a sofa", "a man riding a bicycle",
           "snow on the mountains", "a bowl of fruit on a table", "a crowded street at night",
           "a boat on a lake"]
KEY = "bench-read-key"
PHASE_QUERIES = 10_000  # texts each phase may use before the next phase's
WARM_START = 11 * PHASE_QUERIES  # the warm-up's texts: the last phase's worth before they
# repeat, so up to 11 measured phases (idle ones and update windows) never meet them
PLACES = ["in the morning", "at dusk", "in the rain", "near a river", "in a park", "indoors",
          "on a hill", "by the sea", "in winter", "under trees", "at a market", "in a garden"]


def query_text(i: int) -> str:
    """The i-th request's text, a new one each time (10 x 12 x 1000 = 120,000 before one
    repeats): the encoder's embedding cache must not answer for it, as it would for a
    repeated query."""
    return (f"{QUERIES[i % len(QUERIES)]} {PLACES[(i // len(QUERIES)) % len(PLACES)]}"
            f" {i // (len(QUERIES) * len(PLACES)) % 1000 or ''}").strip()


def _client_load(base: str, clients: int, seconds: float, out, start: int = 0) -> None:
    """Clients posting text searches for ``seconds``; request texts from ``query_text(start)``
    on, each client its own (client n takes start + n, start + n + clients, ...)."""
    import httpx

    from connectors.timing import parse_server_timing

    lat: list[float] = []
    stages: list[dict[str, float]] = []  # each answer's Server-Timing (server-side ms)
    errors = [0]
    versions: set[int] = set()
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(n: int) -> None:
        with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=60) as c:
            i = start + n
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post("/search", json={"text": query_text(i), "limit": 10})
                    ok = r.status_code == 200
                    v = r.json()["anchor_version"] if ok else None
                    st = parse_server_timing(r.headers.get("server-timing")) if ok else {}
                except httpx.HTTPError:
                    ok, v = False, None
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        lat.append(dt)
                        stages.append(st)
                        versions.add(v)
                    else:
                        errors[0] += 1
                i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out.put({"requests": len(lat), "errors": errors[0], "wall_s": wall,
             "lat": lat, "stages": stages, "versions": sorted(versions)})


def load(base: str, clients: int, seconds: float, start: int = 0) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_client_load, args=(base, clients, seconds, q, start))
    p.start()
    res = q.get()
    p.join()
    return summary([res])


def summary(windows: list[dict]) -> dict:
    lat = np.concatenate([np.asarray(w["lat"]) for w in windows]) * 1000
    wall = sum(w["wall_s"] for w in windows)
    n = sum(w["requests"] for w in windows)
    return {"requests": n, "errors": sum(w["errors"] for w in windows), "wall_s": wall,
            "rps": n / wall, "versions": sorted({v for w in windows for v in w["versions"]}),
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            **stage_p50s([st for w in windows for st in w.get("stages", [])]),
            "_windows": windows}


def stage_p50s(stages: list[dict[str, float]]) -> dict[str, float]:
    """p50 of each server-side stage the answers' Server-Timing headers named (``server``:
    the whole request inside the service; the rest of the client's time is HTTP and the
    client itself)."""
    from connectors.timing import STAGES

    out = {}
    cols = [(n, f"{n}_p50_ms") for n in STAGES] + [("total", "server_p50_ms")]
    for name, col in cols:
        vals = [st[name] for st in stages if name in st]
        if vals:
            out[col] = float(np.percentile(vals, 50))
    return out


def build(engine: str, root: Path, a, img_dim: int):
    from asif_index.anchors import AnchorPayload
    from asif_index.config import AsifSettings
    from benchmarks.incremental import clustered
    from benchmarks.scale import open_store
    from connectors.base import item_id, point_records
    from connectors.index import Index

    # the photos are synthetic 1280-d rows, never encoded: the light image encoder names their
    # width without loading the default ensemble; text queries go through the real encoder
    img, txt = AsifSettings.load(image_encoder="light").encoders()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, txt.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = 1 / np.sqrt(txt.dim)
    a_txt = clustered(rng, centres, np.arange(18), a.anchors, noise)[0]
    a_img = rng.standard_normal((a.anchors, img_dim)).astype(np.float32)
    store = open_store(engine, root)
    idx = Index.create(store, img, txt, k=a.k, p=8.0, recipe=RECIPES[a.recipe])
    idx.add_anchor_embeddings(a_img, a_txt, [AnchorPayload(f"a{i}") for i in range(a.anchors)])
    t0 = time.perf_counter()
    mod = a.item_modality
    for s in range(0, a.items, 2048):
        n = min(2048, a.items - s)
        if mod == "text":
            emb = clustered(np.random.default_rng(s + 1), centres, np.arange(20), n, noise)[0]
        else:  # photos: text queries over them are cross-modal (the tuned recipe re-ranks)
            emb = np.random.default_rng(s + 1).standard_normal((n, img_dim)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        sb = idx.project(emb, mod)
        idx.write(point_records(sb, [item_id(mod, f"i{j}") for j in range(s, s + n)], mod,
                                emb, [{"n": j} for j in range(s, s + n)], idx.version))
    if hasattr(store, "optimize"):
        store.optimize()
    print(f"{engine}: {a.items} items in {time.perf_counter() - t0:.0f}s", flush=True)
    new = clustered(np.random.default_rng(99), centres, np.arange(18, 20),
                    max(1, a.anchors // 100), noise)[0]
    new_img = rng.standard_normal((len(new), img_dim)).astype(np.float32)
    return idx, (new_img, new, [AnchorPayload("new") for _ in range(len(new))])


def run_engine(engine: str, a, root: Path) -> list[dict]:
    from connectors.updates import update_anchors

    d = root / engine
    d.mkdir()
    idx, new = build(engine, d, a, img_dim=1280)
    from connectors.service import ServiceSettings, create_app
    from connectors.service.background import serving

    app = create_app(idx, ServiceSettings(read_keys=[KEY], refresh_s=5.0))
    rows = []
    with serving(app, log_level="error") as base:
        # warm (encoder, engine) on texts no measured phase sends: each phase starts at
        # its own offset, so no answer comes from the embedding cache
        load(base, 1, 2.0, start=WARM_START)
        for j, c in enumerate(a.clients):
            r = load(base, c, a.seconds, start=j * PHASE_QUERIES)
            rows.append({"engine": engine, "recipe": a.recipe, "items": a.items, "phase": "idle",
                         "clients": c, **r})
            print(table([rows[-1]], COLS), flush=True)
        if not a.update:
            idx.store.close()
            return _plain(rows)
        # the same load while 1% new anchors are added live (at most --update-seconds)
        v0 = idx.version
        done: dict = {}

        def update():
            t0 = time.perf_counter()
            done["result"] = update_anchors(idx, add=new)
            done["seconds"] = time.perf_counter() - t0

        # windows of load until the update has finished, the first one started before it
        up = threading.Thread(target=update)
        windows = []
        ctx = mp.get_context("spawn")
        while True:
            q = ctx.Queue()
            p = ctx.Process(target=_client_load, args=(
                base, max(a.clients), a.seconds, q, (len(a.clients) + len(windows)) * PHASE_QUERIES))
            p.start()
            if not up.is_alive() and "result" not in done:
                time.sleep(min(2.0, a.seconds / 3))  # the clients are running: now update
                up.start()
            windows.append(q.get())
            p.join()
            if not up.is_alive() or len(windows) * a.seconds >= a.update_seconds:
                break  # bounded in time: the update finishes unloaded if it runs longer
        up.join()
        r = summary(windows)
        idle = next(x for x in rows if x["phase"] == "idle" and x["clients"] == max(a.clients))
        rows.append({"engine": engine, "recipe": a.recipe, "items": a.items,
                     "phase": "during update",
                     "clients": max(a.clients), **r, "update_s": done.get("seconds"),
                     "p99_vs_idle": r["p99_ms"] / idle["p99_ms"],
                     "update_done_under_load": len(windows) * a.seconds < a.update_seconds,
                     "versions_seen": ",".join(map(str, r["versions"])),
                     "mixed": not set(r["versions"]) <= {v0, v0 + 1}})
        print(table([rows[-1]], COLS), flush=True)
    idx.store.close()
    return _plain(rows)


def _plain(rows: list[dict]) -> list[dict]:
    """The rows without the raw windows (latencies, versions) the summaries came from."""
    for r in rows:
        r.pop("versions", None)
        r.pop("_windows", None)
    return rows


COLS = ["engine", "recipe", "items", "phase", "clients", "rps", "p50_ms", "p99_ms", "p99_vs_idle",
        "server_p50_ms", "encode_p50_ms", "project_p50_ms", "search_p50_ms", "requests",
        "errors", "update_s", "versions_seen"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--anchors", type=int, default=30_000)
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=10.0, help="per load phase")
    ap.add_argument("--update-seconds", type=float, default=60.0,
                    help="longest load during the anchor update; a longer update then finishes "
                         "without load (its update_s counts both)")
    ap.add_argument("--no-update", dest="update", action="store_false",
                    help="idle phases only (no load during a live anchor update)")
    ap.add_argument("--engines", default="qdrant-edge,milvus-lite")
    ap.add_argument("--recipe", default="asif", choices=sorted(RECIPES),
                    help="the index's recipe (asif: the recorded figures; tuned: the default, "
                         "whose cross-modal searches re-rank with a query bank)")
    ap.add_argument("--item-modality", default="text", choices=["text", "image"],
                    help="the stored items (image: text queries are cross-modal)")
    ap.add_argument("--out", default="runs/bench/service.json")
    a = ap.parse_args(argv)
    a.clients = [int(x) for x in a.clients.split(",")]
    root = Path(tempfile.mkdtemp(prefix="asif-service-"))
    rows: list[dict] = []
    try:
        for engine in a.engines.split(","):
            rows += run_engine(engine, a, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    md = table(rows, COLS)
    print("\n" + md)
    write_json({"machine": machine(), "config": {k: v for k, v in vars(a).items()},
                "rows": rows, "markdown": md}, a.out)
    return rows


if __name__ == "__main__":
    main()
