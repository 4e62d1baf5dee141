"""Incremental anchors: after adds and removes every visible item equals a fresh rebuild."""

import dataclasses

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.errors import AnchorError, ConfigError, UpdateInterruptedError
from asif_index.recipe import TUNED, Recipe
from connectors.index import Index
from connectors.rebuild import rebuild, resolve_alias, set_alias
from connectors.updates import status, update_anchors
from tests.stores import make_store
from tests.test_congruence import FakeEncoder

DI, DT, K = 24, 16, 30


def data(seed, n):
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 8)).astype(np.float32)
    img = latent @ rng.standard_normal((8, DI)) + 0.4 * rng.standard_normal((n, DI))
    txt = latent @ rng.standard_normal((8, DT)) + 0.4 * rng.standard_normal((n, DT))
    return img.astype(np.float32), txt.astype(np.float32)


def build(kind, tmp_path, n_anchors=120, n_items=300, recipe=Recipe()):
    """An index with anchors and items; the published recipe unless another is given (it
    stays the reference of these tests)."""
    store = make_store(kind, tmp_path)
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K, p=8.0,
                       recipe=recipe)
    ai, at = data(1, n_anchors)
    idx.add_anchor_embeddings(ai, at, [AnchorPayload(f"a{i}") for i in range(n_anchors)])
    ii, it = data(2, n_items)
    for mod, emb in (("image", ii[: n_items // 2]), ("text", it[n_items // 2:])):
        recs, _ = idx.records(emb, mod, [f"{mod}{i}" for i in range(len(emb))],
                              [{"i": i} for i in range(len(emb))])
        idx.write(recs)
    return idx


def assert_equals_rebuild(idx, n_items=300):
    """Every visible point's sparse vector == a fresh projection on the current anchors, one
    point per item, ``n_items`` of them."""
    seen, items = 0, set()
    for batch in idx.store.scroll_items(version=idx.version):
        for mod in ("image", "text"):
            g = [r for r in batch if r.modality == mod]
            if not g:
                continue
            fresh = idx.anchors.project(np.stack([r.embedding for r in g]), mod)
            for j, r in enumerate(g):
                fi, fv = fresh.row(j)
                o = np.argsort(fi)
                np.testing.assert_array_equal(r.sparse_indices, fi[o], err_msg=r.item)
                np.testing.assert_allclose(r.sparse_values, fv[o], atol=1e-5, err_msg=r.item)
                assert r.kth_similarity == pytest.approx(float(fresh.kth_similarity[j]), abs=1e-5)
                assert r.item not in items, f"{r.item} visible twice"
                items.add(r.item)
                seen += 1
    assert seen == idx.store.count_items(version=idx.version) == n_items


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "qdrant-local", "milvus-lite", "qdrant-server", "milvus-server"])
def test_add_then_remove_is_exact(kind, tmp_path):
    idx = build(kind, tmp_path)
    v0 = idx.version
    ni, nt = data(3, 12)
    res = update_anchors(idx, add=(ni, nt, [AnchorPayload(f"new{i}") for i in range(12)]))
    assert idx.version == v0 + 1 and len(idx.anchors) == 132
    # a bounded update reads only the candidate points, a scan all 300
    assert 0 < res.items_touched <= res.items_scanned <= 300, "only affected items re-projected"
    assert_equals_rebuild(idx)
    res_b = update_anchors(idx, add=(*data(7, 6), [AnchorPayload("b")] * 6))
    assert 0 < res_b.items_touched < 300
    assert_equals_rebuild(idx)
    v0 += 1
    gone = np.concatenate([res.added_ids[:4], idx.anchors.ids[:6]]).astype(np.int64)
    res2 = idx.remove_anchors(gone)
    assert idx.version == v0 + 2 and len(idx.anchors) == 128
    assert not np.isin(gone, idx.anchors.ids).any()
    assert 0 < res2.items_touched < 300
    assert_equals_rebuild(idx)
    # a fresh process sees the same state
    again = Index.open(idx.store, FakeEncoder("image", DI), FakeEncoder("text", DT))
    assert again.version == idx.version
    np.testing.assert_array_equal(np.sort(again.anchors.ids), np.sort(idx.anchors.ids))


def test_reader_pinned_during_update_sees_one_version(tmp_path):
    idx = build("memory", tmp_path)
    reader = Index.open(idx.store, FakeEncoder("image", DI), FakeEncoder("text", DT))
    q = reader.project(data(9, 1)[1], "text")
    before = [(h.id, round(h.score, 6)) for h in reader.search_vectors(q, 20)[0]]
    ni, nt = data(4, 30)
    with pytest.raises(KeyboardInterrupt):
        update_anchors(idx, add=(ni, nt, [AnchorPayload("x")] * 30), batch=64, _fail_after_batches=2)
    # crashed mid-update: new points exist but are invisible to the live version
    assert idx.store.count_items() > 300
    during = [(h.id, round(h.score, 6)) for h in reader.search_vectors(q, 20)[0]]
    assert during == before
    with pytest.raises(UpdateInterruptedError, match="interrupted.*--resume"):
        idx.write(idx.records(data(5, 1)[0], "image", ["late"], [{}])[0])
    # resume converges to the exact state
    res = update_anchors(idx, add=(ni, nt, [AnchorPayload("x")] * 30))
    assert res.resumed and idx.version == reader.version + 1
    assert_equals_rebuild(idx)
    assert status(idx.store)["pending_update"] is None
    assert [(h.id, round(h.score, 6)) for h in reader.search_vectors(q, 20)[0]] == before, \
        "a reader pinned to the old version still sees it until it refreshes"
    reader.refresh()
    assert reader.version == idx.version


def test_interrupted_before_anchors_stored_rolls_back(tmp_path):
    idx = build("memory", tmp_path)
    v = idx.version
    real = idx.store.upsert_anchors
    idx.store.upsert_anchors = lambda recs: (_ for _ in ()).throw(KeyboardInterrupt())
    ni, nt = data(6, 5)
    with pytest.raises(KeyboardInterrupt):
        update_anchors(idx, add=(ni, nt, [AnchorPayload("y")] * 5))
    idx.store.upsert_anchors = real
    with pytest.raises(AnchorError, match="rolled back"):
        update_anchors(idx)  # resume without the embeddings: cannot finish, so undo
    assert idx.version == v and status(idx.store)["pending_update"] is None
    update_anchors(idx, add=(ni, nt, [AnchorPayload("y")] * 5))
    assert_equals_rebuild(idx)


def test_unknown_removal_changes_nothing(tmp_path):
    idx = build("memory", tmp_path)
    v = idx.version
    with pytest.raises(AnchorError, match="unknown anchor ids"):
        idx.remove_anchors([99999])
    assert idx.version == v and status(idx.store)["pending_update"] is None


def test_rebuild_with_new_k_and_alias_switch(tmp_path):
    idx = build("qdrant-edge", tmp_path)
    from asif_index.anchors import AnchorManifest
    from connectors.qdrant_edge import QdrantEdgeStore

    registry = QdrantEdgeStore("registry", path=idx.store.where)

    registry.create(AnchorManifest("-", "-", 2, 2))
    set_alias(registry, "prod", idx.store.name)
    target = QdrantEdgeStore(idx.store.name + "_k10", path=idx.store.where)
    new, n = rebuild(idx, target, k=10)
    assert n == 300 and new.k == 10
    assert all(len(r.sparse_indices) <= 10 for b in target.scroll_items() for r in b)
    assert resolve_alias(registry, "prod") == idx.store.name
    set_alias(registry, "prod", target.name)
    assert resolve_alias(registry, "prod") == target.name
    again = Index.open(target, FakeEncoder("image", DI), FakeEncoder("text", DT))
    assert again.k == 10 and again.store.count_items(version=again.version) == 300
    assert_equals_rebuild(again)


@pytest.mark.parametrize("kind", ["memory", "milvus-lite"])
def test_adding_duplicates_of_stored_anchors_stays_exact(kind, tmp_path):
    """New anchors equal to old ones tie exactly with them: the merge cannot tell the order
    from recovered similarities, so those items are re-projected (and the tie rule holds)."""
    idx = build(kind, tmp_path)
    dup_i, dup_t = idx.anchors.image[:40].copy(), idx.anchors.text[:40].copy()
    res = update_anchors(idx, add=(dup_i, dup_t, [AnchorPayload("dup")] * 40))
    assert res.items_touched > 0
    assert_equals_rebuild(idx)


@pytest.mark.parametrize("kind", ["qdrant-edge", "milvus-lite"])
def test_reopen_reads_anchors_from_the_local_copy_and_never_a_stale_one(kind, tmp_path):
    idx = build(kind, tmp_path)
    enc = (FakeEncoder("image", DI), FakeEncoder("text", DT))
    cache = tmp_path / "cache"
    first = Index.open(idx.store, *enc, cache_dir=str(cache))
    real = idx.store.fetch_anchors
    idx.store.fetch_anchors = lambda version=None: (_ for _ in ()).throw(AssertionError("read"))
    try:
        again = Index.open(idx.store, *enc, cache_dir=str(cache))  # from the copy
    finally:
        idx.store.fetch_anchors = real
    np.testing.assert_array_equal(again.anchors.ids, first.anchors.ids)
    np.testing.assert_array_equal(again.anchors.image, first.anchors.image)
    assert [p.caption for p in again.anchors.payloads] == [p.caption for p in first.anchors.payloads]
    update_anchors(idx, add=(*data(3, 12), [AnchorPayload(f"n{i}") for i in range(12)]))
    after = Index.open(idx.store, *enc, cache_dir=str(cache))  # a new version: from the database
    assert after.version == idx.version and len(after.anchors) == 132
    for d in cache.glob("anchors/*"):  # a damaged copy is ignored
        (d / "anchors.npz").write_bytes(b"junk")
    assert len(Index.open(idx.store, *enc, cache_dir=str(cache)).anchors) == 132
    assert_equals_rebuild(after)


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_deleted_items_leave_the_live_version_but_not_a_pinned_reader(kind, tmp_path):
    """Deletion is MVCC: gone at the live version (search, counts, scroll), still there for a
    reader pinned at an older version; an anchor update afterwards does not bring it back."""
    pytest.importorskip({"memory": "numpy", "qdrant-edge": "qdrant_edge",
                         "milvus-lite": "milvus_lite"}[kind])
    idx = build(kind, tmp_path)
    ni, nt = data(4, 10)
    update_anchors(idx, add=(ni, nt, [AnchorPayload("x")] * 10))
    old_reader = Index.open(idx.store, FakeEncoder("image", DI), FakeEncoder("text", DT))
    q = idx.project(data(9, 1)[1], "text")
    victim = idx.search_vectors(q, 1)[0][0].id
    update_anchors(idx, add=(*data(6, 5), [AnchorPayload("y")] * 5))  # live moves on
    assert idx.delete_items([victim]) == 1
    assert victim not in {h.id for h in idx.search_vectors(q, 300)[0]}
    assert idx.store.count_items(version=idx.version) == 299
    assert victim in {h.id for h in old_reader.search_vectors(q, 300)[0]}, "pinned snapshot"
    update_anchors(idx, remove=np.asarray([0, 1]))
    assert victim not in {r.item for b in idx.store.scroll_items(version=idx.version) for r in b}
    assert idx.delete_items([victim]) == 0


VARIANTS = {"centered": Recipe(center=True),
            "per-modality": Recipe(k_image=K - 10, p_image=2.0, k_text=K + 5, p_text=6.0),
            "centered+per-modality": Recipe(center=True, k_image=K - 10, p_image=3.0),
            # the default recipe's shape at this scale (its k_image=3200 would hold every
            # one of these 120 anchors)
            "tuned": dataclasses.replace(TUNED, k_image=2 * K),
            # hub weights: merged items divide them out and back in (random anchors sit near
            # the mean's equator, so a strong beta is what spreads their weights)
            "hub": Recipe(hub=30.0),
            "tuned+hub": dataclasses.replace(TUNED, k_image=2 * K, hub=30.0)}


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_recipe_variant_stays_exact_under_updates(variant, kind, tmp_path):
    """The recipe's statistics are frozen by the first anchors; adds (merged and re-projected)
    and removals then equal a fresh projection with the same recipe, also after a reopen."""
    recipe = VARIANTS[variant]
    idx = build(kind, tmp_path, recipe=recipe)
    assert idx.anchors.recipe == recipe
    centers = idx.store.read_manifest().extra.get("centers")
    assert (centers is not None) == (recipe.center or recipe.hub is not None)
    assert_equals_rebuild(idx)
    res = update_anchors(idx, add=(*data(3, 12), [AnchorPayload(f"n{i}") for i in range(12)]))
    assert 0 < res.items_touched < 300
    assert idx.store.read_manifest().extra.get("centers") == centers  # frozen
    assert_equals_rebuild(idx)
    idx.remove_anchors(idx.anchors.ids[:5].astype(np.int64))
    assert_equals_rebuild(idx)
    again = Index.open(idx.store, FakeEncoder("image", DI), FakeEncoder("text", DT))
    assert again.anchors.recipe == recipe
    assert_equals_rebuild(again)
    if kind == "memory":  # a rebuild keeps the recipe (refreezing it) or changes it
        from connectors.memory import MemoryStore

        kept, n = rebuild(again, MemoryStore("kept"))
        assert n == 300 and kept.anchors.recipe == recipe
        assert_equals_rebuild(kept)
        back, _ = rebuild(again, MemoryStore("back"), recipe=Recipe())
        assert back.anchors.recipe.published and "centers" not in back.store.read_manifest().extra
        assert_equals_rebuild(back)
    # the variant changes what is stored (else the test would not test it)
    plain = build("memory", tmp_path / "plain")
    q = data(9, 1)[1]
    assert not np.array_equal(plain.project(q, "text").indices, idx.project(q, "text").indices) \
        or not np.allclose(plain.project(q, "text").values, idx.project(q, "text").values)


def test_hub_recipe_parses_on_a_name_and_refuses_bad_strengths():
    r = Recipe.parse("tuned,hub=12")
    assert r == dataclasses.replace(TUNED, hub=12.0) and "hub(beta=12)" in r.name
    assert Recipe.from_dict(r.to_dict()) == r  # what a manifest stores reads back
    from asif_index.recipe import parse_list

    assert parse_list("tuned,hub=12") == [r]
    assert parse_list("asif,centered") == [Recipe(), Recipe(center=True)]
    assert parse_list("tuned; tuned,hub=12") == [TUNED, r]
    for bad in ("hub=0", "hub=-1", "hub=inf", "tuned,hub=nan"):
        with pytest.raises(ConfigError, match="hub .*positive number") as e:
            Recipe.parse(bad)
        assert "\n" not in str(e.value)


def test_hub_weights_follow_each_anchor_and_the_frozen_mean(tmp_path):
    """An anchor's hub weight is exp(-beta cos(a, mu)) with mu frozen: adding anchors leaves
    every old anchor's weight as it was."""
    idx = build("memory", tmp_path, recipe=Recipe(hub=5.0))
    a = idx.anchors
    mu = np.asarray(a.manifest.extra["centers"]["image"], np.float64)
    want = np.exp(-5.0 * (a.image @ (mu / np.linalg.norm(mu))))
    np.testing.assert_allclose(a.hub_weights("image"), want, rtol=1e-5)
    before = dict(zip(a.ids.tolist(), a.hub_weights("text").tolist()))
    update_anchors(idx, add=(*data(3, 12), [AnchorPayload(f"n{i}") for i in range(12)]))
    after = dict(zip(idx.anchors.ids.tolist(), idx.anchors.hub_weights("text").tolist()))
    assert all(after[i] == w for i, w in before.items()) and len(after) == len(before) + 12
