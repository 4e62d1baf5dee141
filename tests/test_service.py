"""The HTTP service through FastAPI's test client (the ASGI app in-process)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
from fastapi.testclient import TestClient  # noqa: E402

from connectors.index import Index  # noqa: E402
from connectors.memory import MemoryStore  # noqa: E402
from connectors.service import ServiceSettings, create_app  # noqa: E402

READ, ADMIN = "read-key-123", "admin-key-456"


@pytest.fixture(scope="module")
def served(encoders, tmp_path_factory):
    """Anchors: 30 sample pairs (images under roots/anchors); items: the other 12 images
    (under roots/items) and their captions as text items."""
    from asif_index.sample_data import sample_pairs

    root = tmp_path_factory.mktemp("roots")
    (root / "anchors").mkdir()
    (root / "items").mkdir()
    arrays, captions, labels = sample_pairs()
    paths = []
    for i, a in enumerate(arrays):
        p = root / ("anchors" if i < 30 else "items") / f"{i:02d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    idx = Index.create(MemoryStore("svc"), *encoders, k=20)
    idx.add_anchors(paths[:30], captions[:30], [f"anchors/{p.name}" for p in paths[:30]])
    idx.add_items(paths[30:], "image", [{"path": str(p), "label": labels[i + 30]}
                                        for i, p in enumerate(paths[30:])])
    idx.add_items(captions[30:], "text", [{"caption": c} for c in captions[30:]])
    settings = ServiceSettings(read_keys=[READ], admin_keys=[ADMIN], image_roots=[root],
                               max_upload_bytes=1_000_000)
    client = TestClient(create_app(idx, settings))
    return client, idx, root, labels


def h(key=READ):
    return {"X-API-Key": key}


def test_text_search_returns_items_with_thumbnails(served):
    client, idx, root, labels = served
    r = client.post("/search", json={"text": captions_of(idx)[0], "limit": 5, "modality": "image"},
                    headers=h())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "text" and body["anchor_version"] == idx.version
    assert len(body["hits"]) == 5 and all(x["modality"] == "image" for x in body["hits"])
    scores = [x["score"] for x in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    # the same ranking as the Python API
    assert [x["id"] for x in body["hits"]] == [x.id for x in idx.search(
        text=captions_of(idx)[0], limit=5, filter={"modality": "image"})]
    # query-bank normalisation: the Python API's re-ranking, and refused with an item query
    qb = client.post("/search", json={"text": captions_of(idx)[0], "limit": 5,
                                      "modality": "image", "qbnorm": 0.05}, headers=h()).json()
    assert [x["id"] for x in qb["hits"]] == [x.id for x in idx.search(
        text=captions_of(idx)[0], limit=5, filter={"modality": "image"}, qbnorm=0.05)]
    assert client.post("/search", json={"item_id": body["hits"][0]["id"], "qbnorm": 0.05},
                       headers=h()).status_code == 422
    # the index's default re-ranked this cross-modal search; false gives the plain ranking
    # and a temperature of 1 is a temperature, not true
    assert body["qbnorm"] == idx.anchors.recipe.qbnorm and body["hits"][0]["similarity"]
    plain = client.post("/search", json={"text": captions_of(idx)[0], "limit": 5,
                                         "modality": "image", "qbnorm": False},
                        headers=h()).json()
    assert plain["qbnorm"] is None
    assert all(x["score"] == x["similarity"] and 0 <= x["score"] <= 1 for x in plain["hits"])
    assert [x["id"] for x in plain["hits"]] == [x.id for x in idx.search(
        text=captions_of(idx)[0], limit=5, filter={"modality": "image"}, qbnorm=False)]
    one = client.post("/search", json={"text": "a photo", "modality": "image", "qbnorm": 1},
                      headers=h()).json()
    assert one["qbnorm"] == 1.0
    thumb = client.get(body["hits"][0]["thumbnail_url"], headers=h())
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_search_says_where_its_time_went(served):
    """Server-Timing: each stage a text search ran (encode, project, search) with its
    milliseconds, and the total, which covers them; routes that run none carry no header."""
    from connectors.timing import parse_server_timing

    client, idx, root, labels = served
    r = client.post("/search", json={"text": captions_of(idx)[0], "limit": 5}, headers=h())
    assert r.status_code == 200, r.text
    t = parse_server_timing(r.headers.get("server-timing"))
    assert set(t) == {"encode", "project", "search", "total"}, r.headers.get("server-timing")
    assert all(v > 0 for v in t.values())
    assert t["total"] >= t["encode"] + t["project"] + t["search"]
    # a stored item as the query: nothing encoded or projected, the database searched
    item = r.json()["hits"][0]["id"]
    t = parse_server_timing(client.post("/search", json={"item_id": item, "limit": 3},
                                        headers=h()).headers.get("server-timing"))
    assert set(t) == {"search", "total"}
    assert "server-timing" not in client.get("/healthz").headers


def test_server_timing_values_round_trip():
    from connectors.timing import parse_server_timing, recording, server_timing, stage

    with recording() as acc:
        with stage("encode"):
            pass
        with stage("search"):
            pass
        with stage("search"):  # a stage run twice adds up
            pass
    assert set(acc) == {"encode", "search"}
    got = parse_server_timing(server_timing(acc, 0.5))
    assert got["total"] == 500.0 and got["encode"] == round(acc["encode"] * 1000, 2)
    with stage("encode"):  # no record open: nothing kept anywhere
        pass
    assert parse_server_timing("a;desc=x, b;dur=nope, c;dur=1.5") == {"c": 1.5}


def captions_of(idx):
    return [p.caption for p in idx.anchors.payloads]


def test_search_by_image_upload_path_and_item(served):
    client, idx, root, _ = served
    img = root / "items" / "31.png"
    by_upload = client.post("/search/image", files={"file": ("q.png", img.read_bytes())},
                            data={"limit": "3"}, headers=h()).json()
    by_path = client.post("/search", json={"image_path": str(img), "limit": 3},
                          headers=h()).json()
    assert [x["id"] for x in by_upload["hits"]] == [x["id"] for x in by_path["hits"]]
    top = by_path["hits"][0]
    assert top["payload"]["path"] == str(img) and top["score"] == pytest.approx(1.0, abs=1e-4)
    # an uploaded image over the captions: re-ranked by the index's default, as the Python
    # API does it; 'off' and a temperature through the form field; junk is a 422
    upload = {"file": ("q.png", img.read_bytes())}
    cross = client.post("/search/image", files=upload, data={"limit": "4", "modality": "text"},
                        headers=h()).json()
    want = idx.search_result(image=str(img), limit=4, filter={"modality": "text"})
    assert cross["qbnorm"] == want.qbnorm == idx.anchors.recipe.qbnorm
    assert [x["id"] for x in cross["hits"]] == [x.id for x in want.hits]
    off = client.post("/search/image", files=upload, headers=h(),
                      data={"limit": "4", "modality": "text", "qbnorm": "off"}).json()
    assert off["qbnorm"] is None and [x["id"] for x in off["hits"]] == [x.id for x in idx.search(
        image=str(img), limit=4, filter={"modality": "text"}, qbnorm=False)]
    warm = client.post("/search/image", files=upload, headers=h(),
                       data={"limit": "4", "modality": "text", "qbnorm": "0.5"}).json()
    assert warm["qbnorm"] == 0.5
    assert client.post("/search/image", files=upload, data={"qbnorm": "hot"},
                       headers=h()).status_code == 422
    like = client.post("/search", json={"item_id": top["id"], "limit": 3}, headers=h()).json()
    assert like["query"] == "item" and like["hits"][0]["id"] == top["id"]
    # a filter on a payload field narrows the results
    only = client.post("/search", json={"image_path": str(img), "limit": 10,
                                        "filter": {"label": top["payload"]["label"]}},
                       headers=h()).json()
    assert {x["payload"]["label"] for x in only["hits"]} == {top["payload"]["label"]}


def test_explain_and_classify(served):
    client, idx, root, labels = served
    hit = client.post("/search", json={"text": "a photo", "limit": 1, "modality": "image"},
                      headers=h()).json()["hits"][0]
    ex = client.post("/explain", json={"item_id": hit["id"], "text": "a photo", "top": 5},
                     headers=h()).json()
    # one score: the default recipe normalised this cross-modal hit; its score, in [0, 1],
    # is the explanation's, decomposed into the similarity and the item's log Z
    assert 0 < hit["score"] < 1 and hit["score"] != hit["similarity"]
    assert ex["score"] == pytest.approx(hit["score"], abs=1e-6)
    assert ex["similarity"] == pytest.approx(hit["similarity"], abs=1e-4)
    assert ex["score"] == pytest.approx(
        1 / (1 + np.exp(ex["log_z"] - ex["similarity"] / ex["temperature"])), abs=1e-6)
    assert sum(a["contribution"] for a in ex["anchors"]) <= ex["similarity"] + 1e-6
    plain_hit = client.post("/search", json={"text": "a photo", "limit": 1, "modality": "image",
                                             "qbnorm": False}, headers=h()).json()["hits"][0]
    plain = client.post("/explain", json={"item_id": plain_hit["id"], "text": "a photo",
                                          "qbnorm": False}, headers=h()).json()
    assert plain_hit["score"] == plain_hit["similarity"] == pytest.approx(plain["score"], abs=1e-5)
    assert plain["temperature"] is None and plain["log_z"] is None
    assert 0 < len(ex["anchors"]) <= 5 and all(a["caption"] for a in ex["anchors"])
    contrib = [a["contribution"] for a in ex["anchors"]]
    assert contrib == sorted(contrib, reverse=True)
    t = client.get(ex["anchors"][0]["thumbnail_url"], headers=h())
    assert t.status_code == 200
    img = root / "items" / "35.png"
    r = client.post("/classify", files=[("files", ("a.png", img.read_bytes()))],
                    data={"labels": ",".join(sorted(set(labels)))}, headers=h())
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    names = sorted(set(labels))
    want, scores = idx.classify([img], names)  # the same answer as the Python API
    assert pred["label"] == want[0] and pred["file"] == "a.png"
    np.testing.assert_allclose([pred["scores"][n] for n in names], scores[0], atol=1e-6)
    assert set(pred["scores"]) == set(labels) and pred["label"] == max(pred["scores"],
                                                                        key=pred["scores"].get)


def test_keys_roles_and_health(served):
    client = served[0]
    body = {"text": "a dog", "limit": 2}
    assert client.post("/search", json=body).status_code == 401
    assert client.post("/search", json=body, headers=h("wrong")).status_code == 401
    assert client.post("/search", json=body, headers={"Authorization": f"Bearer {READ}"}
                       ).status_code == 200
    assert client.post("/search", json=body, headers=h(ADMIN)).status_code == 200
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["database"] and health.json()["anchors"] == 30
    assert client.get("/metrics").status_code == 401
    m = client.get("/metrics", headers=h()).text
    assert 'asif_requests_total{method="POST",route="/search",status="401"}' in m
    assert "asif_request_seconds_bucket" in m and "asif_anchors 30" in m
    assert READ not in m and ADMIN not in m
    assert client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "items/../../x.png",
                                  "items/\x00.png"])
def test_paths_outside_the_roots_are_refused(served, path):
    client = served[0]
    r = client.post("/search", json={"image_path": path}, headers=h())
    assert r.status_code == 403, r.text
    assert "outside the image roots" in r.json()["detail"] or "NUL" in r.json()["detail"]


def test_symlink_out_of_a_root_is_refused(served, tmp_path):
    client, _, root, _ = served
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    link = root / "items" / "link.png"
    link.symlink_to(outside)
    try:
        assert client.post("/search", json={"image_path": str(link)}, headers=h()).status_code == 403
    finally:
        link.unlink()


def test_bad_requests_get_clear_4xx_and_the_server_keeps_serving(served):
    client, _, root, _ = served
    bad = [
        client.post("/search", content=b"{not json", headers={**h(), "Content-Type": "application/json"}),
        client.post("/search", json={"text": "x", "image_path": "y"}, headers=h()),
        client.post("/search", json={"text": "x", "limit": 5000}, headers=h()),
        client.post("/search", json={"text": "x", "bogus": 1}, headers=h()),
        client.post("/search", json={"item_id": "nope"}, headers=h()),
        client.post("/search", json={"image_path": "items/missing.png"}, headers=h()),
        client.post("/search/image", files={"file": ("big.png", b"\0" * 1_000_001)}, headers=h()),
        client.post("/search/image", files={"file": ("junk.png", b"not an image")}, headers=h()),
        client.post("/classify", files=[("files", ("a.png", b"x"))], data={"labels": "one"},
                    headers=h()),
    ]
    codes = [r.status_code for r in bad]
    assert codes == [422, 422, 422, 422, 422, 404, 413, 422, 422], [r.text for r in bad]
    for r in bad:
        assert set(r.json()) == {"error", "detail"} and r.json()["detail"]
    assert "limit" in bad[2].json()["detail"] and "nope" in bad[4].json()["detail"]
    assert client.post("/search", json={"text": "a dog"}, headers=h()).status_code == 200


def test_decompression_bomb_upload_is_refused(served):
    client = served[0]
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, "PNG")  # 400 MP, a few KB compressed
    assert len(buf.getvalue()) < 1_000_000
    r = client.post("/search/image", files={"file": ("bomb.png", buf.getvalue())}, headers=h())
    assert r.status_code == 422 and "pixels" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_no_keys_configured_refuses_to_start(served):
    from asif_index.errors import ConfigError

    with pytest.raises(ConfigError, match="no API key"):
        create_app(served[1], ServiceSettings())


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ASIF_SERVE_READ_KEYS", "a, b")
    monkeypatch.setenv("ASIF_SERVE_IMAGE_ROOTS", f"{tmp_path}:{tmp_path}/x")
    s = ServiceSettings()
    assert s.read_keys == ["a", "b"] and s.image_roots[0] == tmp_path.resolve()
    assert json.loads(s.model_dump_json())["cors_origins"] == []


# ------------------------------------------------------------------------------------- jobs
@pytest.fixture(scope="module")
def job_root(tmp_path_factory):
    """Image roots for the job tests (written once): 42 sample images, one corrupt file, and a
    captions table of 12 pairs, one corrupt and one pointing outside the roots."""
    from asif_index.sample_data import sample_pairs

    base = tmp_path_factory.mktemp("jobs")
    root = base / "root"
    (root / "img").mkdir(parents=True)
    arrays, captions, _ = sample_pairs()
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(root / "img" / f"{i}.png")
    (root / "img" / "broken.png").write_bytes(b"not a png")
    rows = ["image\tcaption"] + [f"{i}.png\t{captions[i]}" for i in range(10, 20)]
    rows += ["broken.png\ta broken file", f"{base}/outside.png\tan escape"]
    (root / "pairs.tsv").write_text("\n".join(rows) + "\n")
    Image.new("RGB", (8, 8)).save(base / "outside.png")
    return root, captions


@pytest.fixture()
def jobbed(encoders, job_root, tmp_path):
    """A fresh index (10 anchors) served with jobs over ``job_root``."""
    from connectors.rebuild import rebuild

    root, captions = job_root
    idx = Index.create(MemoryStore("jobs"), *encoders, k=8)
    idx.add_anchors([root / "img" / f"{i}.png" for i in range(10)], captions[:10])

    def rebuild_to_memory(index, k, p):
        return rebuild(index, MemoryStore("rebuilt"), k=k, p=p)

    app = create_app(idx, ServiceSettings(read_keys=[READ], admin_keys=[ADMIN],
                                          image_roots=[root]),
                     jobs_dir=tmp_path / "jobs", rebuild=rebuild_to_memory)
    client = TestClient(app)
    yield client, idx, root, app
    app.state.jobs.stop()


def wait_job(client, job_id, timeout=120):
    import time

    t0 = time.time()
    while time.time() - t0 < timeout:
        j = client.get(f"/jobs/{job_id}", headers=h()).json()
        if j["state"] in ("done", "failed", "cancelled"):
            return j
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {j}")


def test_ingest_and_anchor_jobs_report_progress_and_skips(jobbed):
    client, idx, root, app = jobbed
    r = client.post("/jobs/ingest", json={"captions": "pairs.tsv", "images": "img"},
                    headers=h(ADMIN))
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running")
    j = wait_job(client, r.json()["id"])
    assert j["state"] == "done", j
    assert j["total"] == 12 and j["done"] == 12 and j["result"]["new"] == 10
    reasons = {s["input"].split("|")[0]: s["reason"] for s in j["skipped"]}
    assert "cannot be decoded" in reasons["broken.png"] or "broken" in str(reasons)
    assert any("outside the image roots" in s["reason"] for s in j["skipped"])
    hits = client.post("/search", json={"text": "a photo", "modality": "image", "limit": 20},
                       headers=h()).json()["hits"]
    assert len(hits) == 10
    # anchors from an uploaded table, while searches keep answering on one version or the other
    up = client.post("/uploads", files={"file": ("more.tsv", (root / "pairs.tsv").read_bytes())},
                     headers=h(ADMIN)).json()
    # the handle is opaque: no server path leaves the service; an unknown handle is a 4xx
    assert set(up) == {"handle", "name", "bytes"} and up["handle"].startswith("u-")
    assert str(root) not in json.dumps(up) and "jobs" not in json.dumps(up)
    bad = client.post("/jobs/anchors/add", json={"captions": "u-" + "0" * 32, "images": "img"},
                      headers=h(ADMIN))
    assert 400 <= bad.status_code < 500 and "no upload" in bad.text, bad.text
    v0 = idx.version
    job = client.post("/jobs/anchors/add", json={"captions": up["handle"], "images": "img",
                                                 "batch": 4}, headers=h(ADMIN)).json()
    seen = set()
    while client.get(f"/jobs/{job['id']}", headers=h()).json()["state"] in ("queued", "running"):
        r = client.post("/search", json={"text": "a photo", "limit": 5}, headers=h())
        assert r.status_code == 200
        seen.add(r.json()["anchor_version"])
    j = wait_job(client, job["id"])
    assert j["state"] == "done" and j["result"]["new"] == 10, j
    assert j["result"]["anchors"] == 20 and j["result"]["anchor_version"] == v0 + 3
    assert seen <= set(range(v0, v0 + 4))
    st = client.get("/stats", headers=h()).json()
    assert st["anchors"] == 20 and st["items"] == 10
    # remove two anchors; stored items stay exact (checked against a fresh projection)
    j = wait_job(client, client.post("/jobs/anchors/remove", json={"ids": [0, 1]},
                                     headers=h(ADMIN)).json()["id"])
    assert j["state"] == "done" and j["result"]["removed"] == 2 and j["result"]["anchors"] == 18
    rec = next(iter(next(idx.store.scroll_items(version=idx.version))))
    fresh = idx.project(rec.embedding[None], rec.modality)
    np.testing.assert_array_equal(np.sort(fresh.indices[0]), np.sort(rec.sparse_indices))
    assert client.post("/jobs/anchors/remove", json={"ids": [999]},
                       headers=h(ADMIN)).status_code == 422


def test_rebuild_job_switches_the_service_to_the_new_index(jobbed):
    client, idx, root, app = jobbed
    wait_job(client, client.post("/jobs/ingest", json={"captions": "pairs.tsv", "images": "img"},
                                 headers=h(ADMIN)).json()["id"])
    j = wait_job(client, client.post("/jobs/anchors/rebuild", json={"k": 4},
                                     headers=h(ADMIN)).json()["id"])
    assert j["state"] == "done" and j["result"]["items"] == 10 and j["result"]["k"] == 4
    assert client.get("/stats", headers=h()).json()["k"] == 4
    hits = client.post("/search", json={"text": "a photo", "limit": 3}, headers=h()).json()["hits"]
    assert len(hits) == 3
    # an admin deletes an item: it leaves searches and counts; a second delete is a 404
    assert client.delete(f"/items/{hits[0]['id']}", headers=h(ADMIN)).json() == {"deleted": 1}
    assert client.get("/stats", headers=h()).json()["items"] == 9
    after = client.post("/search", json={"text": "a photo", "limit": 20}, headers=h()).json()
    assert hits[0]["id"] not in {x["id"] for x in after["hits"]}
    assert client.delete(f"/items/{hits[0]['id']}", headers=h(ADMIN)).status_code == 404


def test_ingest_job_records_source_fields_and_pages(jobbed):
    """A job's ``source`` and ``payload`` land on every item; ``offset`` pages /search."""
    client, idx, root, app = jobbed
    r = client.post("/jobs/ingest", json={"captions": "pairs.tsv", "images": "img",
                                          "source": "batch-7", "payload": {"year": 2024}},
                    headers=h(ADMIN))
    assert wait_job(client, r.json()["id"])["state"] == "done"
    body = {"text": "a photo", "modality": "image", "limit": 4,
            "filter": {"source": "batch-7", "year": {"gte": 2024}}}
    pages = [client.post("/search", json={**body, "offset": o}, headers=h()).json()["hits"]
             for o in (0, 4, 8)]
    ids = [x["id"] for p in pages for x in p]
    assert len(ids) == 10 == len(set(ids))
    assert all(x["payload"]["source"] == "batch-7" and x["payload"]["year"] == 2024
               for p in pages for x in p)
    # ConfigError is the service's 400, as for every bad option
    for bad, code in ((("payload", {"a b": 1}), 400), (("payload", {"path": "x"}), 400),
                      (("columns", ["nope"]), 400)):
        r = client.post("/jobs/ingest", json={"captions": "pairs.tsv", "images": "img",
                                              bad[0]: bad[1]}, headers=h(ADMIN))
        assert r.status_code == code, r.text
    r = client.post("/search", json={**body, "offset": 9999}, headers=h())
    assert r.status_code == 400 and "10000" in r.text


def test_images_sent_in_a_multipart_job_are_indexed_with_their_metadata(jobbed, tmp_path):
    """POST /jobs/ingest/images: images by content hash under the service's data root, their
    metadata and source on the items, thumbnails served; a batch with one bad member keeps
    nothing; the same photo sent again is the same item."""
    import io

    from PIL import Image

    client, idx, root, app = jobbed
    store = tmp_path / "jobs" / "uploads" / "images"

    def png(rgb):
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), rgb).save(buf, format="PNG")
        return buf.getvalue()

    files = [("files", (f"p{i}.png", png(c), "image/png"))
             for i, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)])]
    meta = {"p0.png": {"album": "alps", "year": 2019}, "p2.png": {"album": "beach"}}
    r = client.post("/jobs/ingest/images", files=files,
                    data={"metadata": json.dumps(meta), "source": "phone",
                          "payload": json.dumps({"owner": "ann"})}, headers=h(ADMIN))
    assert r.status_code == 202, r.text
    j = wait_job(client, r.json()["id"])
    assert j["state"] == "done" and j["result"]["new"] == 3, j
    hits = client.post("/search", json={"text": "a photo", "limit": 10,
                                        "filter": {"source": "phone"}}, headers=h()).json()["hits"]
    by = {x["payload"]["file"]: x for x in hits}
    assert set(by) == {"p0.png", "p1.png", "p2.png"}
    assert by["p0.png"]["payload"]["year"] == 2019 and by["p2.png"]["payload"]["album"] == "beach"
    assert all(x["payload"]["owner"] == "ann" for x in hits)
    assert str(store) in by["p1.png"]["payload"]["path"]
    th = client.get(f"/items/{by['p1.png']['id']}/thumbnail", headers=h())
    assert th.status_code == 200 and th.headers["content-type"] == "image/jpeg"
    kept = sorted(store.rglob("*.png"))
    assert len(kept) == 3
    # one undecodable file: 422 naming it, nothing stored, no job
    n_jobs = len(client.get("/jobs", headers=h()).json())
    bad = files[:1] + [("files", ("broken.png", b"\x89PNG not really", "image/png"))]
    r = client.post("/jobs/ingest/images", files=bad, headers=h(ADMIN))
    assert r.status_code == 422 and "broken.png" in r.text
    for extra, code, needle in (({"metadata": json.dumps({"zz.png": {}})}, 400, "zz.png"),
                                ({"metadata": "{not json"}, 400, "JSON"),
                                ({"payload": json.dumps({"a b": 1})}, 400, "a b"),
                                ({"payload": json.dumps({"tags": [1]})}, 400, "tags")):
        r = client.post("/jobs/ingest/images", files=files[:1], data=extra, headers=h(ADMIN))
        assert r.status_code == code and needle in r.text, (extra, r.text)
    assert sorted(store.rglob("*.png")) == kept
    assert len(client.get("/jobs", headers=h()).json()) == n_jobs
    # the same photo again: one stored file, the same item (updated, not new)
    j = wait_job(client, client.post("/jobs/ingest/images", files=files[:1],
                                     headers=h(ADMIN)).json()["id"])
    assert j["state"] == "done" and j["result"]["new"] == 0 and j["result"]["updated"] == 1, j
    assert sorted(store.rglob("*.png")) == kept
    assert client.post("/jobs/ingest/images", files=files[:1],
                       headers=h(READ)).status_code == 403


def test_jobs_refuse_bad_sources_up_front(jobbed):
    client = jobbed[0]
    for body, code in [({"captions": "../../etc/passwd"}, 403), ({"folder": "nope"}, 404),
                       ({"captions": "pairs.tsv", "folder": "img"}, 422), ({}, 422)]:
        r = client.post("/jobs/ingest", json=body, headers=h(ADMIN))
        assert r.status_code == code, (body, r.text)
    bad = client.post("/uploads", files={"file": ("x.exe", b"MZ")}, headers=h(ADMIN))
    assert bad.status_code == 422
    assert client.get("/jobs/nope", headers=h()).status_code == 404


ADMIN_ROUTES = [("post", "/jobs/ingest", {"json": {"texts": "t.txt"}}),
                ("post", "/jobs/anchors/add", {"json": {"captions": "pairs.tsv"}}),
                ("post", "/jobs/anchors/remove", {"json": {"ids": [1]}}),
                ("post", "/jobs/anchors/rebuild", {"json": {}}),
                ("post", "/uploads", {"files": {"file": ("a.tsv", b"image\tcaption\n")}}),
                ("delete", "/jobs/abc", {}), ("delete", "/items/abc", {})]


@pytest.mark.parametrize("method,path,kw", ADMIN_ROUTES)
def test_admin_routes_refuse_read_keys_and_no_key(served, method, path, kw):
    client = served[0]
    assert getattr(client, method)(path, **kw).status_code == 401
    r = getattr(client, method)(path, headers=h(READ), **kw)
    assert r.status_code == 403 and "admin key" in r.json()["detail"]
    assert not client.get("/jobs", headers=h()).json(), "nothing was started"


def test_composed_search_locate_and_text_heads_over_http(served, tmp_path):
    client, idx, root, labels = served
    img = root / "items" / "31.png"
    composed = client.post("/search/image", files={"file": ("q.png", img.read_bytes())},
                           data={"limit": "5", "text": "a photo of the moon",
                                 "image_weight": "0.3"}, headers=h()).json()
    assert composed["query"] == "composed"
    want = idx.search(text="a photo of the moon", image=str(img), image_weight=0.3, limit=5)
    assert [x["id"] for x in composed["hits"]] == [x.id for x in want]
    bad = client.post("/search/image", files={"file": ("q.png", img.read_bytes())},
                      data={"text": "x", "image_weight": "1.5"}, headers=h())
    assert bad.status_code == 422
    r = client.post("/locate", files={"file": ("q.png", img.read_bytes())},
                    data={"text": "a cat"}, headers=h())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    w, hgt = Image.open(io.BytesIO(r.content)).size
    assert (w, hgt) == Image.open(img).size
    assert 0 <= int(r.headers["X-Peak-X"]) < w and 0 <= int(r.headers["X-Peak-Y"]) < hgt
    idx.cache_dir = str(tmp_path)  # where the heads live
    idx.train_text_classifier("kinds", ["cat", "rocket", "moon"])
    got = client.post("/classify", files=[("files", ("q.png", img.read_bytes()))],
                      data={"head": "kinds"}, headers=h()).json()
    p = got["predictions"][0]
    assert set(p["scores"]) == {"cat", "rocket", "moon"}
    assert abs(sum(p["scores"].values()) - 1) < 1e-4
    missing = client.post("/classify", files=[("files", ("q.png", img.read_bytes()))],
                          data={"head": "nope"}, headers=h())
    assert missing.status_code in (404, 422) and "nope" in missing.text


def test_path_and_filter_errors_are_json_never_plain_500(served):
    client, idx, root, _ = served
    c = TestClient(client.app, raise_server_exceptions=False)
    for body in ({"image_path": "a" * 5000}, {"image_path": "items/" + "b" * 300 + ".png"},
                 {"image_path": "x" * 255 + "/" + "y" * 255}, {"text": "x", "filter": {'a"': 1}},
                 {"text": "x", "filter": {"label": {"gte": "cat"}}},
                 {"text": "x", "filter": {"asif_to": {"gte": 0}}}):
        r = c.post("/search", json=body, headers=h())
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] and r.json()["detail"], r.text


def test_anchor_list_image_explanations_and_image_search_filters(served):
    client, idx, root, labels = served
    page = client.get("/anchors", params={"limit": 7}, headers=h()).json()
    assert page["total"] == len(idx.anchors) and len(page["anchors"]) == 7
    assert page["anchor_version"] == idx.version
    assert [a["id"] for a in page["anchors"]] == idx.anchors.ids[:7].tolist()
    rest = client.get("/anchors", params={"offset": 7, "limit": 500}, headers=h()).json()
    assert len(page["anchors"]) + len(rest["anchors"]) == page["total"]
    word = idx.anchors.payloads[0].caption.split()[-1]
    hit = client.get("/anchors", params={"grep": word.upper()}, headers=h()).json()
    assert hit["total"] >= 1 and all(word.lower() in a["caption"].lower()
                                     for a in hit["anchors"])
    assert client.get(page["anchors"][0]["thumbnail_url"], headers=h()).status_code == 200
    assert client.get("/anchors", params={"limit": 0}, headers=h()).status_code == 422
    # an image query explained: the score /search/image gave, decomposed
    img = root / "items" / "33.png"
    up = {"file": ("q.png", img.read_bytes())}
    res = client.post("/search/image", files=up, data={"limit": "3", "modality": "text"},
                      headers=h()).json()
    top = res["hits"][0]
    ex = client.post("/explain/image", files=up, data={"item_id": top["id"], "top": "4"},
                     headers=h()).json()
    assert ex["score"] == pytest.approx(top["score"], abs=1e-6)
    assert ex["similarity"] == pytest.approx(top["similarity"], abs=1e-4)
    assert 0 < len(ex["anchors"]) <= 4
    # /search/image takes a filter (JSON text), as /search does
    lab = labels[33]
    only = client.post("/search/image", files=up, headers=h(),
                       data={"limit": "20", "filter": json.dumps({"label": lab})}).json()
    assert only["hits"] and {x["payload"]["label"] for x in only["hits"]} == {lab}
    bad = client.post("/search/image", files=up, data={"filter": "{nope"}, headers=h())
    assert bad.status_code == 422 and "JSON" in bad.text
