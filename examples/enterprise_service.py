"""Enterprise integration: the service with API keys, and a client that ingests a folder
through a job (polling its progress) and searches with filters, all over HTTP.

    python examples/enterprise_service.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

READ_KEY, ADMIN_KEY = "example-read-key", "example-admin-key"


class Client:
    """A minimal client of the asif-index HTTP API (httpx)."""

    def __init__(self, base: str, key: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=120)

    def ingest_folder(self, folder: str) -> dict:
        job = self.http.post("/jobs/ingest", json={"folder": folder}).raise_for_status().json()
        while job["state"] in ("queued", "running"):
            time.sleep(0.2)
            job = self.http.get(f"/jobs/{job['id']}").raise_for_status().json()
            print(f"  job {job['id']}: {job['state']} {job['done']}/{job['total']}")
        return job

    def search(self, text: str, **kw) -> list[dict]:
        return self.http.post("/search", json={"text": text, **kw}).raise_for_status().json()["hits"]


def main(argv=None) -> dict:
    from examples._sample import sample_split

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=Path, default=Path("asif-demo-images"))
    a = ap.parse_args(argv)

    from asif_index.config import AsifSettings
    from connectors.index import Index
    from connectors.memory import MemoryStore
    from connectors.service import ServiceSettings, create_app
    from connectors.service.background import serving

    a_paths, a_caps, _, i_paths, i_labels = sample_split(a.images / "anchors")
    library = a.images / "library"  # the folder to ingest: one sub-folder per class
    for p, lab in zip(i_paths, i_labels):
        (library / lab).mkdir(parents=True, exist_ok=True)
        p.replace(library / lab / p.name)
    img, txt = AsifSettings.load().encoders()
    idx = Index.create(MemoryStore("enterprise"), img, txt, k=20)
    idx.add_anchors(a_paths, a_caps, [str(p) for p in a_paths])
    app = create_app(idx, ServiceSettings(read_keys=[READ_KEY], admin_keys=[ADMIN_KEY],
                                          image_roots=[a.images.resolve()]))
    with serving(app) as base:
        admin, reader = Client(base, ADMIN_KEY), Client(base, READ_KEY)
        refused = reader.http.post("/jobs/ingest", json={"folder": "library"}).status_code
        print(f"a read key may not ingest: HTTP {refused}")
        job = admin.ingest_folder("library")
        print(f"ingested {job['result']['new']} images in {job['result']['seconds']}s")
        hits = reader.search("a photo of a cat", limit=3)
        print("'a photo of a cat':", [h["payload"].get("label") for h in hits])
        only = reader.search("something round", limit=5, filter={"label": "coins"})
        print("'something round' among label=coins:", [h["payload"].get("label") for h in only])
    return {"refused": refused, "job": job, "hits": hits, "filtered": only}


if __name__ == "__main__":
    main()
