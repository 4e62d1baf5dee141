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
    thumb = client.get(body["hits"][0]["thumbnail_url"], headers=h())
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


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
    assert ex["score"] == pytest.approx(hit["score"], abs=1e-4)
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
