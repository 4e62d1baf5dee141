"""Issue 25's search: QB-Norm folded into the stored vectors, and two-stage search (trimmed
candidate vectors, exact rescoring), on every store against the exact in-memory ranking,
through anchor adds, removals and item deletes."""

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.errors import ConfigError
from asif_index.methods.qbnorm_fold import FOLD_DIM, QBNormFold
from connectors.base import item_id
from connectors.index import Index
from connectors.search_stages import log_odds, normalised
from tests.stores import make_store
from tests.test_congruence import DI, DT, K, FakeEncoder, make_scenario

STORES = ["memory", "qdrant-edge", "qdrant-local", "milvus-lite"]
N_IMG = 120


def build(kind, tmp_path, candidate_keep=12):
    sc = make_scenario()
    store = make_store(kind, tmp_path)
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K, p=8.0,
                       candidate_keep=candidate_keep)
    idx.add_anchor_embeddings(sc["anchor_img"][:300], sc["anchor_txt"][:300],
                              [AnchorPayload(f"c{i}") for i in range(300)])
    emb = np.concatenate([sc["item_img"], sc["q_img"][:N_IMG - len(sc["item_img"])]])[:N_IMG]
    recs, errs = idx.records(emb, "image", [f"im{i}" for i in range(len(emb))],
                             [{"n": i} for i in range(len(emb))])
    assert not errs
    idx.write(recs)
    return idx, sc, emb


def exact_ranking(idx, emb, q, alive, limit=10):
    """(ids, normalised scores) of the exact QB-Norm ranking of every live item, in memory."""
    items = idx.project(emb, "image")
    qv = idx.project(q[None], "text")
    s = qv.dot(items)
    fold = idx.anchors.fold
    scores = fold.bank("text").rescore_matrix(s, items, fold.temperature)[0]
    scores = np.where(alive, scores, -np.inf)
    order = np.lexsort((np.arange(len(emb)), -scores))[:limit]
    return [item_id("image", f"im{i}") for i in order], scores[order]


def assert_equal_rankings(hits, ids, scores):
    """Hits (scores in [0, 1]) against the exact normalised ranking (s/T - log Z)."""
    got = [h.id for h in hits]
    assert all(0 < h.score < 1 for h in hits)
    logits = [log_odds(h.score) for h in hits]
    # a swap of two items whose normalised scores tie within float32 noise is not a miss
    for g, w, sc in zip(got, ids, scores):
        if g != w:
            other = logits[got.index(g)]
            assert abs(other - sc) < 1e-3, (got, ids)
    np.testing.assert_allclose(logits, scores, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", STORES)
def test_folded_qbnorm_equals_the_exact_normalised_ranking(kind, tmp_path):
    idx, sc, emb = build(kind, tmp_path)
    fold = idx.anchors.fold
    assert isinstance(fold, QBNormFold) and fold.spec.bank_version == idx.version
    alive = np.ones(len(emb), bool)

    def check(exact=None):
        if exact is None:
            return check(True) or check(False) or rescored()
        for q in sc["q_txt"][:6]:
            qv = idx.project(q[None], "text")
            res = normalised(idx, idx.anchors, qv, "text", 10, None, None, idx.version,
                             fold.temperature, False, exact=exact)
            assert res.qbnorm == fold.temperature
            ids, scores = exact_ranking(idx, emb, q, alive)
            assert_equal_rankings(res.hits, ids, scores)
            # the hit's similarity is the plain dot product, read off the folded score
            items = idx.project(emb, "image")
            for h in res.hits[:3]:
                j = [item_id("image", f"im{i}") for i in range(len(emb))].index(h.id)
                np.testing.assert_allclose(h.similarity, qv.dot(items)[0, j], atol=2e-5)

    def rescored():
        """The plain ranking's top C re-scored by the fold each hit carries: with C the
        whole collection it is the exact normalised ranking."""
        from connectors.search_stages import unfold

        for q in sc["q_txt"][:6]:
            qv = idx.project(q[None], "text")
            hits = idx.search_vectors(qv, 10, fold=True, fold_candidates=N_IMG)[0]
            assert_equal_rankings(unfold(hits, idx.anchors.fold),
                                  *exact_ranking(idx, emb, q, alive))

    check()
    with pytest.raises(ConfigError, match="fold_candidates must be a whole number") as e:
        idx.search_vectors(idx.project(sc["q_txt"][:1], "text"), 10, fold=True,
                           fold_candidates=5)
    assert "\n" not in str(e.value)
    # every stored fold value is the exact one for its stored vector
    stored = [r for b in idx.store.scroll_items(version=idx.version) for r in b]
    want = fold.values("image", [(r.sparse_indices, r.sparse_values) for r in stored])
    np.testing.assert_allclose([r.fold for r in stored], want, rtol=1e-6)
    assert all(FOLD_DIM not in r.sparse_indices for r in stored)

    # anchors added: the bank stays frozen, re-projected items are re-folded
    res = idx.add_anchor_embeddings(sc["anchor_img"][300:], sc["anchor_txt"][300:],
                                    [AnchorPayload(f"n{i}") for i in range(100)])
    assert len(res) == 100 and idx.anchors.fold.spec.bank_version == 1
    check()
    # anchors removed, items deleted
    idx.remove_anchors(idx.anchors.ids[:7])
    gone = [item_id("image", f"im{i}") for i in (0, 5, 9)]
    idx.delete_items(gone)
    alive[[0, 5, 9]] = False
    check()
    stored = [r for b in idx.store.scroll_items(version=idx.version) for r in b]
    want = idx.anchors.fold.values("image", [(r.sparse_indices, r.sparse_values) for r in stored])
    np.testing.assert_allclose([r.fold for r in stored], want, rtol=1e-6)
    # the default search (no qbnorm argument) is the folded one
    idx.encoders["text"] = type("E", (), {"encode": lambda self, t: sc["q_txt"][:1]})()
    res = idx.search_result(text="a caption", limit=10)
    assert res.qbnorm == fold.temperature
    assert_equal_rankings(res.hits, *exact_ranking(idx, emb, sc["q_txt"][0], alive))


@pytest.mark.parametrize("kind", STORES)
def test_two_stage_hits_are_exact(kind, tmp_path):
    """Every hit two stages return has its exact score, in exact order; with enough
    candidates the top 10 is the exact top 10."""
    idx, sc, emb = build(kind, tmp_path)
    alive = np.ones(len(emb), bool)
    for q in sc["q_txt"][:6]:
        qv = idx.project(q[None], "text")
        plain_exact = idx.search_vectors(qv, N_IMG, exact=True)[0]
        exact_score = {h.id: h.score for h in plain_exact}
        few = idx.search_vectors(qv, 10, candidates=15)[0]
        assert len(few) == 10
        for h in few:
            assert h.score == pytest.approx(exact_score[h.id], rel=1e-5, abs=1e-6)
        assert [h.score for h in few] == sorted([h.score for h in few], reverse=True)
        # folded and two-stage together: normalised scores exact on every hit
        res = normalised(idx, idx.anchors, qv, "text", 10, None, None, idx.version,
                         idx.anchors.fold.temperature, False, candidates=60)
        ids, scores = exact_ranking(idx, emb, q, alive, limit=N_IMG)
        by_id = dict(zip(ids, scores))
        for h in res.hits:
            assert log_odds(h.score) == pytest.approx(by_id[h.id], rel=1e-4, abs=1e-3)
        full = idx.search_vectors(qv, 10, candidates=N_IMG - 1)[0]
        assert [h.id for h in full] == [h.id for h in plain_exact[:10]] or np.allclose(
            [h.score for h in full], [h.score for h in plain_exact[:10]], rtol=1e-5)
    # filters reach both stages
    qv = idx.project(sc["q_txt"][:1], "text")
    hits = idx.search_vectors(qv, 10, {"n": {"$lt": 40}}, candidates=15)[0]
    assert hits and all(h.payload["n"] < 40 for h in hits)


def test_bad_two_stage_options_are_one_line_errors(tmp_path):
    idx, sc, _ = build("memory", tmp_path)
    qv = idx.project(sc["q_txt"][:1], "text")
    for bad in (0, 5, -1, 10**6, 2.5, "many", True):
        with pytest.raises(ConfigError, match=r"candidates \(--candidates\) must be") as e:
            idx.search_vectors(qv, 10, candidates=bad)
        assert "\n" not in str(e.value)
    for bad in (-3, 5000, 1.5, "x"):
        with pytest.raises(ConfigError, match="candidate_keep"):
            Index.create(make_store("memory", tmp_path), FakeEncoder("image", DI),
                         FakeEncoder("text", DT), k=K, candidate_keep=bad)


def test_the_bank_anchors_survive_garbage_collection(tmp_path):
    """Removed anchors of the bank's version stay stored, so a process that opens the index
    later (a writer) rebuilds the frozen bank and folds new items exactly."""
    from connectors.versioning import retire

    idx, sc, emb = build("qdrant-edge", tmp_path)
    bank_before = idx.anchors.fold.bank("text").queries
    idx.remove_anchors(idx.anchors.ids[:20])
    idx.add_anchor_embeddings(sc["anchor_img"][300:310], sc["anchor_txt"][300:310],
                              [AnchorPayload(f"n{i}") for i in range(10)])
    retire(idx.store, idx.version)
    again = Index.open(idx.store, FakeEncoder("image", DI), FakeEncoder("text", DT))
    assert again.anchors.fold.spec == idx.anchors.fold.spec
    bank = again.anchors.fold.bank("text").queries
    np.testing.assert_array_equal(bank.indices, bank_before.indices)
    np.testing.assert_allclose(bank.values, bank_before.values, rtol=1e-5)  # fp32 order
    recs, _ = again.records(sc["q_img"][-3:], "image", ["new0", "new1", "new2"], [{}, {}, {}])
    want = idx.anchors.fold.values("image", [(r.sparse_indices, r.sparse_values) for r in recs])
    np.testing.assert_allclose([r.fold for r in recs], want, rtol=1e-5)


def test_an_index_without_the_recipe_temperature_does_not_fold(tmp_path):
    from asif_index.recipe import PUBLISHED

    store = make_store("memory", tmp_path)
    sc = make_scenario()
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K,
                       recipe=PUBLISHED)
    idx.add_anchor_embeddings(sc["anchor_img"][:100], sc["anchor_txt"][:100],
                              [AnchorPayload(f"c{i}") for i in range(100)])
    assert idx.anchors.fold is None and "qbnorm_fold" not in store.read_manifest().extra
    recs, _ = idx.records(sc["item_img"][:5], "image", list("abcde"), [{}] * 5)
    assert all(r.fold is None for r in recs)


def _stored_equal_fresh(idx):
    """Every visible point equals a fresh projection of its raw embedding (and fold)."""
    recs = [r for b in idx.store.scroll_items(version=idx.version) for r in b]
    for mod in ("image", "text"):
        group = [r for r in recs if r.modality == mod]
        if not group:
            continue
        sb = idx.project(np.stack([r.embedding for r in group]), mod)
        for j, r in enumerate(group):
            i, v = sb.row(j)
            o = np.argsort(i)
            np.testing.assert_array_equal(r.sparse_indices, i[o])
            np.testing.assert_allclose(r.sparse_values, v[o], rtol=1e-5, atol=1e-7)
        if idx.anchors.fold is not None:
            want = idx.anchors.fold.values(mod, [(r.sparse_indices, r.sparse_values)
                                                 for r in group])
            np.testing.assert_allclose([r.fold for r in group], want, rtol=1e-5)
    return recs


@pytest.mark.parametrize("kind", STORES)
def test_a_bounded_update_reads_only_the_points_it_can_change(kind, tmp_path):
    """New-domain anchors: the database finds the candidates (dense threshold search per
    k-th bucket), the update reads only those, re-projects the affected ones, and every
    point (touched or not) equals the exact projection at the new version; removals read
    the removed anchors' posting lists."""
    from asif_index.recipe import Recipe
    from connectors.updates import update_anchors

    sc = make_scenario()
    store = make_store(kind, tmp_path)
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K, p=8.0,
                       recipe=Recipe(p_text=4.0, qbnorm=0.05))
    idx.add_anchor_embeddings(sc["anchor_img"][:300], sc["anchor_txt"][:300],
                              [AnchorPayload(f"c{i}") for i in range(300)])
    for mod, emb in (("image", sc["item_img"]), ("text", sc["item_txt"])):
        recs, _ = idx.records(emb, mod, [f"{mod}{i}" for i in range(len(emb))],
                              [{} for _ in range(len(emb))])
        idx.write(recs)
    n = len(sc["item_img"]) + len(sc["item_txt"])
    before = {r.item: r.sparse_indices.tolist() for b in store.scroll_items(version=idx.version)
              for r in b}
    rng = np.random.default_rng(3)
    # a new domain: anchors away from the items (opposite their mean), one beside an item
    far_i = -sc["item_img"].mean(0) + 0.05 * rng.standard_normal((5, DI)).astype(np.float32)
    far_t = -sc["item_txt"].mean(0) + 0.05 * rng.standard_normal((5, DT)).astype(np.float32)
    new_img = np.concatenate([far_i, sc["item_img"][:1]]).astype(np.float32)
    new_txt = np.concatenate([far_t, sc["item_txt"][:1]]).astype(np.float32)
    new_img /= np.linalg.norm(new_img, axis=1, keepdims=True)
    new_txt /= np.linalg.norm(new_txt, axis=1, keepdims=True)
    res = update_anchors(idx, add=(new_img, new_txt, [AnchorPayload("new")] * 6))
    after = {r.item: r.sparse_indices.tolist() for r in _stored_equal_fresh(idx)}
    changed = sum(before[i] != after[i] for i in before)
    assert 0 < changed <= res.items_touched <= res.items_scanned < n / 2
    # removal: only the removed anchors' holders (and any with k-th <= 0) are read
    gone = idx.anchors.ids[:3]
    res = idx.remove_anchors(gone)
    recs = _stored_equal_fresh(idx)
    holders = sum(bool(set(gone.tolist()) & set(before_i)) for before_i in after.values())
    assert res.items_scanned < n and res.items_touched >= holders > 0
    assert all(not set(gone.tolist()) & set(r.sparse_indices.tolist()) for r in recs)


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge"])
def test_float16_raw_embeddings_keep_updates_exact(kind, tmp_path):
    """raw_dtype='float16': the stored raw embedding is the rounded one and the item was
    projected from it, so an anchor update's re-projection from storage stays exact."""
    sc = make_scenario()
    store = make_store(kind, tmp_path)
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K, p=8.0,
                       raw_dtype="float16")
    assert store.read_manifest().extra["raw_dtype"] == "float16"
    idx.add_anchor_embeddings(sc["anchor_img"][:300], sc["anchor_txt"][:300],
                              [AnchorPayload(f"c{i}") for i in range(300)])
    emb = sc["item_txt"][:200]
    recs, _ = idx.records(emb, "text", [f"t{i}" for i in range(200)], [{}] * 200)
    idx.write(recs)
    stored = {r.item: r for b in store.scroll_items(version=idx.version) for r in b}
    half = emb.astype(np.float16).astype(np.float32)
    for i in range(200):
        np.testing.assert_array_equal(stored[item_id("text", f"t{i}")].embedding, half[i])
    idx.add_anchor_embeddings(sc["anchor_img"][300:], sc["anchor_txt"][300:],
                              [AnchorPayload(f"n{i}") for i in range(100)])
    _stored_equal_fresh(idx)
    with pytest.raises(ConfigError, match="raw_dtype"):
        Index.create(make_store("memory", tmp_path), FakeEncoder("image", DI),
                     FakeEncoder("text", DT), raw_dtype="int8")


def test_records_written_without_fold_values_are_folded_by_write(tmp_path):
    """A writer that builds records itself (point_records) still stores fold values: an
    unfolded item would otherwise drop out of the normalised ranking's guarantees."""
    from connectors.base import point_records

    idx, sc, emb = build("memory", tmp_path)
    e = sc["q_img"][-4:]
    sb = idx.project(e, "image")
    recs = point_records(sb, [item_id("image", f"x{i}") for i in range(4)], "image", e,
                         [{}] * 4, idx.version)
    assert all(r.fold is None for r in recs)
    idx.write(recs)
    got = idx.store.points_at([r.item for r in recs], idx.version)
    want = idx.anchors.fold.values("image", [sb.row(i) for i in range(4)])
    np.testing.assert_allclose([got[r.item].fold for r in recs], want, rtol=1e-6)


def test_points_near_over_many_queries_equals_the_reference(tmp_path):
    """More queries than one batch (64): the points later batches leave out are the ones
    found already, so the union equals the in-memory reference."""
    from asif_index.recipe import Recipe

    sc = make_scenario()
    found = {}
    for kind in ("memory", "qdrant-edge"):
        store = make_store(kind, tmp_path / kind)
        idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K,
                           recipe=Recipe(p_text=4.0, qbnorm=0.05))
        idx.add_anchor_embeddings(sc["anchor_img"][:300], sc["anchor_txt"][:300],
                                  [AnchorPayload(f"c{i}") for i in range(300)])
        recs, _ = idx.records(sc["item_img"], "image",
                              [f"i{i}" for i in range(len(sc["item_img"]))],
                              [{}] * len(sc["item_img"]))
        idx.write(recs)
        qs = sc["anchor_img"][300:].copy()  # 100 queries: two batches
        found[kind] = store.points_near("image", qs, 0.35, (-np.inf, np.inf), idx.version)
    assert found["memory"] and found["memory"] == found["qdrant-edge"]
