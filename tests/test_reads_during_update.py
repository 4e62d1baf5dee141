"""Readers pinned at version V while an update has moved some items' heads to V+1: their
points come from one filtered read (``points_at``), equal to what V held, on every store;
the re-ranked search answers exactly as before the update began."""

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.recipe import Recipe
from connectors.updates import update_anchors
from tests.test_updates import build, data


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "qdrant-local", "milvus-lite"])
def test_points_at_the_pinned_version_while_heads_moved(kind, tmp_path):
    idx = build(kind, tmp_path, recipe=Recipe(qbnorm=0.05))
    v = idx.version
    at_v = {r.item: r for b in idx.store.scroll_items(version=v) for r in b}
    q = idx.project(data(5, 3)[1], "text")
    hits_before = idx.search_vectors(q, 10, {"modality": "image"})
    ranked_before = _reranked(idx, q, v)
    with pytest.raises(KeyboardInterrupt):  # stops after the first batch of the item pass
        update_anchors(idx, add=(*data(3, 40), [AnchorPayload("n")] * 40), batch=64,
                       _fail_after_batches=1)
    moved = [k for k, r in idx.store.heads(list(at_v)).items() if r.valid_from > v]
    assert moved, "the first batch re-projected some items"
    got = idx.store.points_at(list(at_v), v)
    assert got.keys() == at_v.keys()
    for k in moved:
        assert got[k].valid_from <= v < got[k].valid_to
        np.testing.assert_array_equal(got[k].sparse_indices, at_v[k].sparse_indices)
    assert idx.version == v
    assert [[h.id for h in r] for r in idx.search_vectors(q, 10, {"modality": "image"})] == \
        [[h.id for h in r] for r in hits_before]
    assert _reranked(idx, q, v) == ranked_before


def _reranked(idx, q, v):
    hits = idx.search_vectors(q, 20, {"modality": "image"}, version=v)[0]
    return [(r.item, r.valid_from, tuple(r.sparse_indices.tolist())) for r in idx._stored(hits, v)]


def test_the_service_follows_another_process_update_without_making_requests_wait(tmp_path):
    """Another Index (as another process would) updates the anchors: the service keeps
    answering at V while a background refresh loads and prepares V+1, then moves to it."""
    import time

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from connectors.index import Index
    from connectors.service import ServiceSettings, create_app
    from tests.test_congruence import FakeEncoder
    from tests.test_updates import DI, DT

    served = build("memory", tmp_path, recipe=Recipe(qbnorm=0.05))
    other = Index.open(served.store, FakeEncoder("image", DI), FakeEncoder("text", DT))
    app = create_app(served, ServiceSettings(read_keys=["r"], refresh_s=0))
    client = TestClient(app)
    item = next(iter(served.store.scroll_items(version=served.version)))[0].item
    v = served.version

    def ask():
        r = client.post("/search", json={"item_id": item, "limit": 5}, headers={"X-API-Key": "r"})
        assert r.status_code == 200, r.text
        return r.json()["anchor_version"]

    assert ask() == v
    update_anchors(other, add=(*data(3, 12), [AnchorPayload("n")] * 12))
    seen = [ask()]  # answered at once, by whichever version is adopted
    deadline = time.monotonic() + 30
    while seen[-1] != v + 1 and time.monotonic() < deadline:
        app.state.wait_idle()
        seen.append(ask())
    assert seen[-1] == v + 1 and set(seen) <= {v, v + 1}
    # V+1 was prepared before use: its top-k engines built; the recipe's QB-Norm is folded
    # into the items with the bank frozen at V, so no search (and no refresh) builds a bank
    assert served.anchors._engines, "V+1's engines built before use"
    assert served.anchors.fold is not None and served.anchors.fold.spec.bank_version <= v
    assert not served._banks
