"""The same scenario on every backend gives the exact in-memory result (qdrant-client style
congruence tests)."""

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.search import rank
from connectors.base import item_id
from connectors.index import Index
from tests.stores import BACKENDS, make_store


class FakeEncoder:
    """Encoder stand-in for scale tests: items are their own embeddings."""

    def __init__(self, modality, dim):
        self.modality, self.dim, self.name = modality, dim, f"fake-{modality}-{dim}"

    def encode(self, items):
        return np.asarray(items, np.float32)

    def content_key(self, item):
        return None


N_ANCHORS, N_ITEMS, DI, DT, K = 400, 1000, 32, 24, 50


def make_scenario():
    rng = np.random.default_rng(11)
    # correlated modalities so that cross-modal search is meaningful
    latent = rng.standard_normal((N_ANCHORS + N_ITEMS + 40, 16)).astype(np.float32)
    wi, wt = rng.standard_normal((16, DI)), rng.standard_normal((16, DT))
    img = latent @ wi + 0.3 * rng.standard_normal((len(latent), DI))
    txt = latent @ wt + 0.3 * rng.standard_normal((len(latent), DT))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return {
        "anchor_img": img[:N_ANCHORS].astype(np.float32),
        "anchor_txt": txt[:N_ANCHORS].astype(np.float32),
        "item_img": img[N_ANCHORS:N_ANCHORS + N_ITEMS // 2].astype(np.float32),
        "item_txt": txt[N_ANCHORS + N_ITEMS // 2:N_ANCHORS + N_ITEMS].astype(np.float32),
        "q_txt": txt[-20:].astype(np.float32),
        "q_img": img[-40:-20].astype(np.float32),
    }


@pytest.fixture(scope="module")
def scenario():
    return make_scenario()


def build(kind, tmp_path, sc):
    store = make_store(kind, tmp_path)
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K, p=8.0)
    idx.add_anchor_embeddings(sc["anchor_img"], sc["anchor_txt"],
                              [AnchorPayload(f"caption {i}") for i in range(N_ANCHORS)])
    for mod, emb in (("image", sc["item_img"]), ("text", sc["item_txt"])):
        keys = [f"{mod}-{i}" for i in range(len(emb))]
        recs, errs = idx.records(emb, mod, keys, [{"n": i, "group": i % 3} for i in range(len(emb))])
        assert not errs
        for s in range(0, len(recs), 200):
            idx.write(recs[s:s + 200])
    return idx


def assert_same_ids_ties_aside(got, want_ids, want_scores, atol=1e-5):
    got_ids = [h.id for h in got]
    got_scores = np.array([h.score for h in got])
    np.testing.assert_allclose(got_scores, want_scores, atol=atol)
    if got_ids != list(want_ids):
        kth = want_scores[-1]
        for gid, wid, gs in zip(got_ids, want_ids, got_scores):
            if gid != wid:
                assert abs(gs - kth) < atol or np.isclose(gs, want_scores).sum() > 1, (gid, wid)


@pytest.mark.parametrize("kind", BACKENDS)
def test_top10_congruent_with_exact_path(kind, tmp_path, scenario):
    idx = build(kind, tmp_path, scenario)
    assert idx.store.count_items() == N_ITEMS
    assert idx.store.count_items({"modality": "image"}) == N_ITEMS // 2
    items = {m: idx.project(scenario[f"item_{'img' if m == 'image' else 'txt'}"], m)
             for m in ("image", "text")}
    ids = {m: [item_id(m, f"{m}-{i}") for i in range(N_ITEMS // 2)] for m in items}
    for qmod, qkey in (("text", "q_txt"), ("image", "q_img")):
        q = idx.project(scenario[qkey], qmod)
        for target in ("image", "text"):
            scores, order = rank(q, items[target], 10)  # the core's exact path
            hits = idx.search_vectors(q, 10, {"modality": target})
            for r in range(len(q)):
                want = [ids[target][j] for j in order[r]]
                assert_same_ids_ties_aside(hits[r], want, scores[r])
    # a payload filter narrows results the same way everywhere
    q = idx.project(scenario["q_txt"][:1], "text")
    hits = idx.search_vectors(q, 10, {"modality": "image", "group": 1})[0]
    assert hits and all(h.payload["group"] == 1 for h in hits)
    assert all(h.modality == "image" for h in hits)


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "qdrant-local", "milvus-lite"])
def test_reopen_needs_only_the_database(kind, tmp_path, scenario):
    idx = build(kind, tmp_path, scenario)
    store = idx.store
    if kind != "memory":
        store.close()
        store = make_store(kind, tmp_path, name=idx.store.name)
    again = Index.open(store, FakeEncoder("image", DI), FakeEncoder("text", DT))
    np.testing.assert_allclose(again.anchors.image, idx.anchors.image, atol=1e-6)
    np.testing.assert_array_equal(again.anchors.ids, idx.anchors.ids)
    assert again.anchors.version == idx.anchors.version
    assert [p.caption for p in again.anchors.payloads] == [p.caption for p in idx.anchors.payloads]
    rec = again.item(item_id("image", "image-3"))
    want = idx.records(scenario["item_img"][3:4], "image", ["image-3"], [{}])[0][0]
    np.testing.assert_array_equal(rec.sparse_indices, want.sparse_indices)
    np.testing.assert_allclose(rec.sparse_values, want.sparse_values, atol=1e-6)
    np.testing.assert_allclose(rec.embedding, want.embedding, atol=1e-6)
    assert rec.payload == {"n": 3, "group": 0}
    from asif_index.errors import EncoderMismatchError

    with pytest.raises(EncoderMismatchError, match="image encoder"):
        Index.open(store, FakeEncoder("image", DI + 1), FakeEncoder("text", DT))


def test_query_pruning_keeps_the_best_matches(tmp_path, scenario):
    idx = build("memory", tmp_path, scenario)
    q = idx.project(scenario["q_txt"], "text")
    full = idx.search_vectors(q, 10, {"modality": "image"})
    idx.query_keep = K  # keeping all k entries changes nothing
    assert [[h.id for h in hh] for hh in idx.search_vectors(q, 10, {"modality": "image"})] == \
        [[h.id for h in hh] for hh in full]
    idx.query_keep = 10
    pruned = idx.search_vectors(q, 10, {"modality": "image"})
    overlap = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(pruned, full)])
    assert overlap > 0.5
    assert np.mean([a[0].id == b[0].id for a, b in zip(pruned, full)]) >= 0.8


@pytest.mark.parametrize("kind", BACKENDS)
def test_id_ranges_partition_every_scroll(kind, tmp_path, scenario):
    """Workers scroll disjoint id ranges (a distributed anchor update): on every backend the
    ranges together give each visible point exactly once, in batches no larger than asked."""
    from connectors.base import id_ranges

    idx = build(kind, tmp_path, scenario)
    whole = sorted(r.id for b in idx.store.scroll_items(version=idx.version) for r in b)
    assert len(whole) == N_ITEMS
    for n in (1, 3, 7):
        parts = []
        for rng in id_ranges(n):
            got = [r.id for b in idx.store.scroll_items(64, idx.version, rng) for r in b]
            assert all(len(b) <= 64 for b in idx.store.scroll_items(64, idx.version, rng))
            lo, hi = rng
            assert all((lo is None or i >= lo) and (hi is None or i < hi) for i in got)
            parts += got
        assert sorted(parts) == whole, (n, len(parts))
    with pytest.raises(ValueError):
        id_ranges(0)
