"""Query-bank normalisation: the inverted softmax over a bank of anchor queries, exact against
a dense computation, discounting hubs, and through the database equal to the exact path, also
after a live anchor update."""

import numpy as np
import pytest

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.errors import ConfigError
from asif_index.methods.qbnorm import BANK_STRIDE, QueryBank
from connectors.search_stages import log_odds
from tests.stores import make_store


def small_anchors(n=60, d=12, seed=0):
    rng = np.random.default_rng(seed)
    a = AnchorSet(AnchorManifest("i", "t", d, d, k=10, p=4.0))
    a.add(rng.standard_normal((n, d)).astype(np.float32),
          rng.standard_normal((n, d)).astype(np.float32),
          [AnchorPayload(f"c{i}") for i in range(n)])
    return a, rng


def test_log_partition_equals_the_dense_sum():
    a, rng = small_anchors()
    bank = QueryBank(a, "text")
    assert len(bank) == len(range(0, 60, BANK_STRIDE))
    items = a.project(rng.standard_normal((7, 12)).astype(np.float32), "image")
    dense_bank = np.zeros((len(bank), 60))
    for r in range(len(bank)):
        i, v = bank.queries.row(r)
        dense_bank[r, i] = v
    dense_items = np.zeros((7, 60))
    for r in range(7):
        i, v = items.row(r)
        dense_items[r, i] = v
    want = np.log(np.exp(dense_bank @ dense_items.T / 0.05).sum(0))
    got = bank.log_partition([items.row(r) for r in range(7)], 0.05)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    s = np.arange(7.0)
    np.testing.assert_allclose(bank.rescore(s, [items.row(r) for r in range(7)], 0.05),
                               s / 0.05 - want)
    # an item holding anchors newer than the bank: those entries meet no bank query
    assert np.isfinite(bank.log_partition([(np.array([0, 999]), np.array([0.5, 0.5]))])).all()
    with pytest.raises(ConfigError, match="temperature"):
        bank.log_partition([items.row(0)], 0.0)
    with pytest.raises(ConfigError, match="stride"):
        QueryBank(a, "text", stride=0)


def test_a_hub_near_every_query_is_discounted():
    """Anchor 0 is in every bank query; anchor 7 in one. For that query the hub item (on
    anchor 0) scores above the specific item (on anchor 7); normalised, the specific wins."""
    from asif_index.sparse import SparseBatch

    idx = np.array([[0, 1], [0, 2], [0, 3], [0, 7], [0, 4], [0, 5]], np.int64)
    val = np.array([[0.8, 0.6]] * 6, np.float32)
    bank = QueryBank.from_queries(SparseBatch(idx, val, np.zeros(6, np.float32)), "text")
    hub, specific = (np.array([0]), np.array([1.0])), (np.array([7]), np.array([1.0]))
    plain = np.array([0.8, 0.6])  # query 3 (anchors 0 and 7) against the two items
    normalised = bank.rescore(plain, [hub, specific], 0.05)
    assert plain.argmax() == 0 and normalised.argmax() == 1


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge"])
def test_search_through_the_database_equals_the_exact_path(kind, tmp_path):
    """Index.search(qbnorm=T) on a folded index ranks by s/T - log Z in the database: its
    order and scores equal re-scoring every item in memory against the frozen bank, also
    after an anchor update (which keeps the bank and re-folds the items it re-projects)."""
    from tests.test_congruence import DI, DT, K, FakeEncoder, make_scenario
    from connectors.base import item_id
    from connectors.index import Index

    sc = make_scenario()
    idx = Index.create(make_store(kind, tmp_path), FakeEncoder("image", DI),
                       FakeEncoder("text", DT), k=K, p=8.0)
    idx.add_anchor_embeddings(sc["anchor_img"][:300], sc["anchor_txt"][:300],
                              [AnchorPayload(f"c{i}") for i in range(300)])
    texts = sc["item_txt"][:80]
    recs, _ = idx.records(texts, "text", [f"t{i}" for i in range(80)], [{} for _ in range(80)])
    idx.write(recs)

    def exact(q):
        items = idx.project(texts, "text")
        qv = idx.project(q[None], "image")
        s = qv.dot(items)
        assert idx.anchors.fold is not None and idx.anchors.fold.spec.bank_version == 1
        scores = idx.anchors.fold.bank("image").rescore_matrix(s, items, 0.05)[0]
        order = np.lexsort((np.arange(80), -scores))[:10]
        return [item_id("text", f"t{i}") for i in order], scores[order]

    for q in sc["q_img"][:5]:
        hits = idx.search(image=q, limit=10, filter={"modality": "text"}, qbnorm=0.05)
        ids, scores = exact(q)
        assert [h.id for h in hits] == ids
        np.testing.assert_allclose([log_odds(h.score) for h in hits], scores, rtol=1e-4)
    idx.add_anchor_embeddings(sc["anchor_img"][300:], sc["anchor_txt"][300:],
                              [AnchorPayload(f"n{i}") for i in range(100)])
    hits = idx.search(image=sc["q_img"][1], limit=10, filter={"modality": "text"}, qbnorm=0.05)
    assert [h.id for h in hits] == exact(sc["q_img"][1])[0]
    with pytest.raises(ConfigError, match="composed"):
        idx.search(image=sc["q_img"][0], text="x", qbnorm=0.05)


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge"])
def test_the_default_recipe_reranks_cross_modal_results_only(kind, tmp_path):
    """A new index gets the tuned recipe: a search whose candidates are all of the other
    modality is re-ranked at the recipe's temperature (as an explicit qbnorm=0.05 is); one
    whose candidates include the query's modality, a composed query and qbnorm=False keep
    the plain ranking; an index with the published recipe never re-ranks unasked."""
    from tests.test_congruence import DI, DT, K, FakeEncoder, make_scenario
    from asif_index.recipe import DEFAULT, PUBLISHED
    from connectors.index import Index

    sc = make_scenario()
    store = make_store(kind, tmp_path)
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K, p=8.0)
    assert idx.anchors.recipe == DEFAULT and DEFAULT.qbnorm is not None
    assert store.read_manifest().extra["recipe"] == DEFAULT.to_dict()
    idx.add_anchor_embeddings(sc["anchor_img"][:300], sc["anchor_txt"][:300],
                              [AnchorPayload(f"c{i}") for i in range(300)])
    for mod, emb in (("text", sc["item_txt"][:60]), ("image", sc["item_img"][:60])):
        recs, _ = idx.records(emb, mod, [f"{mod}{i}" for i in range(60)], [{} for _ in range(60)])
        idx.write(recs)
    moved = 0
    for q in sc["q_img"][:6]:
        res = idx.search_result(image=q, limit=10, filter={"modality": "text"})
        assert res.qbnorm == DEFAULT.qbnorm and res.query == "image"
        explicit = idx.search(image=q, limit=10, filter={"modality": "text"},
                              qbnorm=DEFAULT.qbnorm)
        assert [(h.id, h.score) for h in res.hits] == [(h.id, h.score) for h in explicit]
        plain = idx.search(image=q, limit=10, filter={"modality": "text"}, qbnorm=False)
        moved += [h.id for h in plain] != [h.id for h in res.hits]
        mixed = idx.search_result(image=q, limit=10)  # candidates hold images too
        assert mixed.qbnorm is None
        assert [h.id for h in mixed.hits] == [h.id for h in idx.search(image=q, limit=10,
                                                                        qbnorm=False)]
    assert moved, "the normalisation re-ranked none of the queries"
    from types import SimpleNamespace

    idx.encoders["text"] = SimpleNamespace(encode=lambda texts: sc["q_txt"][:1])
    composed = idx.search_result(image=sc["q_img"][0], text="a caption",
                                 filter={"modality": "text"})
    assert composed.query == "composed" and composed.qbnorm is None
    with pytest.raises(ConfigError, match="temperature"):
        idx.search(text="x", qbnorm=-1.0)
    pub = Index.create(make_store("memory", tmp_path / "pub"), FakeEncoder("image", DI),
                       FakeEncoder("text", DT), k=K, p=8.0, recipe=PUBLISHED)
    pub.add_anchor_embeddings(sc["anchor_img"][:300], sc["anchor_txt"][:300],
                              [AnchorPayload(f"c{i}") for i in range(300)])
    recs, _ = pub.records(sc["item_txt"][:60], "text", [f"t{i}" for i in range(60)],
                          [{} for _ in range(60)])
    pub.write(recs)
    assert pub.search_result(image=sc["q_img"][0], filter={"modality": "text"}).qbnorm is None
