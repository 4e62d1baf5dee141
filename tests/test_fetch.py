"""Image URLs in a table: downloaded under a byte and a time limit, checked as images, kept by
content hash, and every failure a skipped item with its reason (nothing of it kept), through
the pipeline, the CLI and the service. A loopback HTTP server stands in for the web."""

import http.server
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from connectors.pipeline.fetch import FetchLimits, fetch_items, is_url
from connectors.pipeline.readers import SourceItem, read_captions_table

LIMIT = 50_000  # bytes a URL may send in these tests
SEEN: list[str] = []  # paths the server was asked for


def png(rgb, size=40) -> bytes:
    a = np.full((size, size, 3), 20, np.uint8)
    a[5:size - 5, 5:size - 5] = rgb
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


PHOTOS = {f"/p{i}.png": png(c) for i, c in enumerate([(220, 30, 30), (30, 180, 40),
                                                        (30, 60, 220), (200, 200, 30)])}


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        p = self.path
        SEEN.append(p)
        if p in PHOTOS:
            return self._send(200, PHOTOS[p], "image/png")
        if p == "/big.png":  # declares more than the limit
            return self._send(200, b"\0" * (LIMIT + 10), "image/png")
        if p == "/endless":  # no Content-Length, and more than the limit
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\0" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if p == "/slow.png":  # a byte every 0.1 s for 6 s: each read is quick, the whole is not
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(60):
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if p == "/text.png":
            return self._send(200, b"<html>not an image</html>", "text/html")
        if p == "/elsewhere":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return None
        if p == "/moved":
            self.send_response(301)
            self.send_header("Location", "/p0.png")
            self.end_headers()
            return None
        return self._send(404, b"no", "text/plain")

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def web():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    yield f"http://127.0.0.1:{srv.server_address[1]}", closed
    srv.shutdown()


BAD = {  # path -> a word the reason must hold
    "/big.png": "limit", "/endless": "limit", "/slow.png": "longer than", "/missing.png": "404",
    "/text.png": "not a decodable image", "/elsewhere": "edirect",  # to file://: refused
}


def table(tmp_path, base, closed, with_bad=True):
    rows = [("image", "caption", "album")]
    rows += [(f"{base}{p}", f"photo {i}", "web") for i, p in enumerate(PHOTOS)]
    rows.append((f"{base}/moved", "moved photo", "web"))  # a redirect to p0: the same file
    if with_bad:
        rows += [(f"{base}{p}", f"bad {p}", "web") for p in BAD]
        rows.append((f"http://127.0.0.1:{closed}/x.png", "unreachable", "web"))
    t = tmp_path / "urls.tsv"
    t.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    return t


def test_fetch_stage_keeps_good_images_and_names_each_failure(web, tmp_path):
    base, closed = web
    items = list(read_captions_table(table(tmp_path, base, closed)))
    assert all(it.url and it.image is None for it in items)
    assert is_url(items[0].url) and not is_url("photos/a.jpg") and not is_url("file:///x")
    store = tmp_path / "kept"
    t0 = time.monotonic()
    out = list(fetch_items(items, store, FetchLimits(max_bytes=LIMIT, timeout_s=1.0)))
    assert time.monotonic() - t0 < 5.0  # the 6-second dribble was cut at its 1-second limit
    assert [it.key for it in out] == [it.key for it in items]  # in order, one for one
    good = [it for it in out if not it.error]
    assert len(good) == len(PHOTOS) + 1
    for it in good:
        assert it.image.is_file() and it.payload["path"] == str(it.image)
        assert it.payload["url"] == it.url and it.payload["album"] == "web"
        assert it.image.read_bytes() in PHOTOS.values()
    assert good[0].image == good[-1].image  # the redirect led to p0's bytes: one file
    # every stored file is a good image: nothing of a failed URL is kept
    kept = sorted(p for p in store.rglob("*") if p.is_file())
    assert len(kept) == len(PHOTOS) and not any(p.name.startswith(".") for p in kept)
    reasons = {it.url.rsplit("/", 1)[-1]: it.error for it in out if it.error}
    for path, word in BAD.items():
        r = reasons[path.lstrip("/")]
        assert word in r and "\n" not in r and path in r, (path, r)
    assert "unreachable" in reasons["x.png"]


def test_a_resumed_run_downloads_nothing_before_its_checkpoint(web, tmp_path):
    from connectors.pipeline.fetch import FetchingSource
    from connectors.pipeline.ingest import resume_at

    base, closed = web
    items = list(read_captions_table(table(tmp_path, base, closed, with_bad=False)))
    src = FetchingSource(items, tmp_path / "kept", FetchLimits(max_bytes=LIMIT, timeout_s=1.0))
    SEEN.clear()
    rest = list(resume_at(src, 3))
    assert [it.key for it in rest] == [it.key for it in items[3:]]
    redirected = ["/p0.png"] if any(it.url.endswith("/moved") for it in items[3:]) else []
    assert sorted(SEEN) == sorted([it.url[len(base):] for it in items[3:]] + redirected)


def test_bad_limits_are_one_line_errors():
    from asif_index.errors import ConfigError

    for kw in ({"max_bytes": 0}, {"timeout_s": 0}, {"timeout_s": 1e4}, {"workers": 0},
               {"max_bytes": True}):
        with pytest.raises(ConfigError):
            FetchLimits(**kw)


def test_unfetched_urls_are_skipped_with_the_fix(tmp_path, encoders):
    """A URL item that reaches ingestion without the fetch stage is a skipped item that says
    how to fetch it, never an image read from a wrong path."""
    from asif_index.anchors import AnchorPayload
    from connectors.index import Index
    from connectors.memory import MemoryStore
    from connectors.pipeline import ingest_items

    idx = Index.create(MemoryStore("u"), *encoders, k=4)
    rng = np.random.default_rng(0)
    idx.add_anchor_embeddings(rng.standard_normal((8, encoders[0].dim)).astype(np.float32),
                              rng.standard_normal((8, encoders[1].dim)).astype(np.float32),
                              [AnchorPayload(f"c{i}") for i in range(8)])
    s = ingest_items(idx, [SourceItem("k", url="http://127.0.0.1:9/a.png", text="a")], "image",
                     progress=False)
    assert s.ingested == 0 and "--fetch-dir" in s.skipped[0][1]


def test_cli_ingests_a_url_table_with_fetch_dir(web, tmp_path, capfd):
    from asif_cli.main import main
    from asif_index.sample_data import sample_pairs

    base, closed = web
    arrays, captions, _ = sample_pairs()
    (tmp_path / "a").mkdir()
    rows = ["image\tcaption"]
    for i, a in enumerate(arrays[:12]):
        Image.fromarray(a).save(tmp_path / "a" / f"{i}.png")
        rows.append(f"{i}.png\t{captions[i]}")
    (tmp_path / "anchors.tsv").write_text("\n".join(rows) + "\n")
    pytest.importorskip("qdrant_edge")
    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "f",
         "--cache-dir", str(tmp_path / "c")]
    assert main(["init", "--k", "6"] + a) == 0
    assert main(["anchors", "add", "--captions", str(tmp_path / "anchors.tsv"), "--images",
                 str(tmp_path / "a")] + a) == 0
    t = table(tmp_path, base, closed)
    capfd.readouterr()
    assert main(["ingest", "--captions", str(t)] + a) == 2  # URLs, no --fetch-dir
    err = capfd.readouterr().err
    assert "--fetch-dir" in err and len(err.strip().splitlines()) == 1, err
    assert main(["ingest", "--captions", str(t), "--fetch-dir", str(tmp_path / "web"),
                 "--fetch-max-mb", str(LIMIT / 2**20), "--fetch-timeout", "1"] + a) == 0
    out = capfd.readouterr().out
    assert f"ingested {len(PHOTOS)} new" in out, out  # the redirect is p0 again: no new item
    capfd.readouterr()
    assert main(["search", "--text", "a photo", "--json", "--limit", "20",
                 "--filter", "album=web"] + a) == 0
    hits = json.loads(capfd.readouterr().out)["hits"]
    assert len(hits) == len(PHOTOS) and all(h["payload"]["url"].startswith(base) for h in hits)
    assert all((tmp_path / "web") in Path(h["payload"]["path"]).parents for h in hits)


def test_service_job_downloads_a_url_table(web, tmp_path, encoders):
    from fastapi.testclient import TestClient

    from asif_index.sample_data import sample_pairs
    from connectors.index import Index
    from connectors.memory import MemoryStore
    from connectors.service import ServiceSettings, create_app
    from tests.test_service import ADMIN, READ, h, wait_job

    base, closed = web
    arrays, captions, _ = sample_pairs()
    (tmp_path / "a").mkdir()
    paths = []
    for i, arr in enumerate(arrays[:12]):
        Image.fromarray(arr).save(tmp_path / "a" / f"{i}.png")
        paths.append(tmp_path / "a" / f"{i}.png")
    idx = Index.create(MemoryStore("web"), *encoders, k=6)
    idx.add_anchors(paths, captions[:12])
    t = table(tmp_path, base, closed)
    for on in (False, True):
        app = create_app(idx, ServiceSettings(
            read_keys=[READ], admin_keys=[ADMIN], image_roots=[tmp_path], fetch_urls=on,
            fetch_max_bytes=LIMIT, fetch_timeout_s=1.0), jobs_dir=tmp_path / f"jobs{on}")
        client = TestClient(app)
        try:
            up = client.post("/uploads", files={"file": ("urls.tsv", t.read_bytes())},
                             headers=h(ADMIN)).json()
            r = client.post("/jobs/ingest", json={"captions": up["handle"]}, headers=h(ADMIN))
            if not on:
                assert r.status_code == 422 and "fetch_urls" in r.json()["detail"], r.text
                assert idx.store.count_items(version=idx.version) == 0
                continue
            j = wait_job(client, r.json()["id"])
            assert j["state"] == "done", j
            assert j["result"]["new"] == len(PHOTOS)
            reasons = [s["reason"] for s in j["skipped"]]
            assert len(reasons) == len(BAD) + 1 and all("\n" not in x for x in reasons)
            hits = client.post("/search", json={"text": "a photo", "limit": 20,
                                                "filter": {"album": "web"}},
                               headers=h()).json()["hits"]
            assert len(hits) == len(PHOTOS)
            assert all(x["payload"]["url"].startswith(base) for x in hits)
            thumb = client.get(hits[0]["thumbnail_url"], headers=h())
            assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        finally:
            app.state.jobs.stop()
