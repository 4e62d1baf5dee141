"""Database-backed search: build an index on Qdrant (embedded engine) or Milvus Lite from the
bundled sample, query it from Python, then over HTTP through the service.

    python examples/database_search.py --backend qdrant --path /tmp/asif-demo
    python examples/database_search.py --backend milvus --path /tmp/asif-demo.db
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> dict:
    from examples._sample import sample_split

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", choices=["qdrant", "milvus"], default="qdrant")
    ap.add_argument("--path", type=Path, default=Path("asif-demo-db"))
    ap.add_argument("--images", type=Path, default=Path("asif-demo-images"))
    a = ap.parse_args(argv)

    from asif_index.config import AsifSettings
    from connectors import Index, open_store

    settings = AsifSettings.load(backend=a.backend, path=a.path, collection="demo")
    img, txt = settings.encoders()
    a_paths, a_caps, _, i_paths, i_labels = sample_split(a.images)
    idx = Index.create(open_store(settings), img, txt, k=20, recreate=True)
    idx.add_anchors(a_paths, a_caps, [str(p) for p in a_paths], source="sample")
    idx.add_items(i_paths, "image", [{"path": str(p.resolve()), "label": lab}
                                     for p, lab in zip(i_paths, i_labels)])
    print(f"{a.backend}: {len(idx.anchors)} anchor pairs, {idx.stats()['items']} items")

    # from Python: every class name as a query; is the class's held-out photo first?
    found = {}
    for lab in sorted(set(i_labels)):
        hits = idx.search(text=f"a photo of {lab}", limit=3)
        found[lab] = hits[0].payload["label"] == lab
        print(f"  'a photo of {lab}': {[h.payload['label'] for h in hits]}")
    print(f"top-1 correct for {sum(found.values())} of {len(found)} classes "
          f"(chance: 1 in {len(i_paths)})")

    # over HTTP: the service on a loopback port, queried with a read key
    import httpx

    from connectors.service import ServiceSettings, create_app
    from connectors.service.background import serving

    app = create_app(idx, ServiceSettings(read_keys=["demo-read-key"],
                                          image_roots=[a.images.resolve()]))
    with serving(app) as base:
        r = httpx.post(f"{base}/search", json={"text": "a photo of a cat", "limit": 3},
                       headers={"X-API-Key": "demo-read-key"}, timeout=60)
        http_hits = [h["payload"]["label"] for h in r.json()["hits"]]
        print(f"HTTP POST /search 'a photo of a cat': {http_hits}")
    same = http_hits == [h.payload["label"] for h in idx.search(text="a photo of a cat", limit=3)]
    idx.close()
    return {"found": found, "http_hits": http_hits, "http_equals_python": same}


if __name__ == "__main__":
    main()
