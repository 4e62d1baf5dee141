"""Paging (``offset`` + ``limit``): on every store, successive pages are slices of one order,
(score desc, item id asc), so they neither skip nor repeat a hit, also where ties straddle a
page boundary, with and without a filter; bad page values are one-line errors."""

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.errors import ConfigError
from asif_index.recipe import PUBLISHED
from connectors import filters
from connectors.index import Index
from tests.stores import BACKENDS, make_store
from tests.test_congruence import DI, DT, FakeEncoder

N_ANCHORS, N_DISTINCT, COPIES = 80, 30, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(8)

    def unit(n, d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # every image embedding stored under COPIES ids: identical vectors, identical scores,
    # so tie groups of 3 land across page boundaries of 4
    return {"ai": unit(N_ANCHORS, DI), "at": unit(N_ANCHORS, DT),
            "ii": np.repeat(unit(N_DISTINCT, DI), COPIES, axis=0), "q": unit(1, DI)}


def build(kind, tmp_path, d):
    idx = Index.create(make_store(kind, tmp_path), FakeEncoder("image", DI),
                       FakeEncoder("text", DT), k=15, p=8.0, recipe=PUBLISHED)
    idx.add_anchor_embeddings(d["ai"], d["at"], [AnchorPayload(f"c{i}") for i in range(N_ANCHORS)])
    n = len(d["ii"])
    # ids written in an order unrelated to their sort order
    order = np.random.default_rng(1).permutation(n)
    recs, errs = idx.records(d["ii"][order], "image", [f"img{i:03d}" for i in order],
                             [{"n": int(i), "album": "a" if i % 2 else "b"} for i in order])
    assert not errs
    idx.write(recs)
    return idx


def reference(idx, d, flt):
    """The whole ranking by exact score, ties by id, from the stored vectors in Python."""
    q = idx.anchors.project(d["q"], "image")
    qi, qv = q.row(0)
    qd = dict(zip(qi.tolist(), qv.tolist()))
    rows = []
    for batch in idx.store.scroll_items(version=idx.version):
        for r in batch:
            if filters.matches(filters.parse(flt), r.payload, r.modality):
                s = float(np.float32(sum(qd.get(int(i), 0.0) * float(v)
                                         for i, v in zip(r.sparse_indices, r.sparse_values))))
                if s > 0:
                    rows.append((r.item, s))
    return rows


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "qdrant-local"])
@pytest.mark.parametrize("flt", [None, {"album": "a"}])
def test_pages_are_slices_of_one_order(kind, flt, tmp_path, data):
    idx = build(kind, tmp_path, data)
    ref = reference(idx, data, flt)
    assert len(ref) > 12
    seen = []
    for offset in range(0, len(ref) + 4, 4):
        page = idx.search(image=data["q"][0], limit=4, filter=flt, offset=offset,
                          qbnorm=False)
        seen += [h.id for h in page]
        scores = [h.score for h in page]
        # each page in the documented order
        assert [(-s, i) for s, i in zip(scores, (h.id for h in page))] == \
            sorted((-s, i) for s, i in zip(scores, (h.id for h in page)))
    assert len(seen) == len(set(seen)), "a hit repeated across pages"
    by_id = dict(ref)
    assert set(seen) == set(by_id), "pages skipped hits (or returned others)"
    # the concatenation is the reference order: score desc (to float32 noise), id asc in ties
    for a, b in zip(seen, seen[1:]):
        assert by_id[a] >= by_id[b] - 1e-6, (a, b)
        if by_id[a] == by_id[b]:  # copies of one vector: exactly equal scores
            assert a < b, (a, b)
    # ties really straddle pages in this scenario
    assert any(by_id[seen[j]] == pytest.approx(by_id[seen[j + 1]], abs=1e-6)
               for j in range(3, len(seen) - 1, 4))


def test_page_values_are_one_line_errors(tmp_path, data):
    idx = build("memory", tmp_path, data)
    for kw, needle in (({"offset": -1}, "offset"), ({"offset": 1.5}, "offset"),
                       ({"limit": 0}, "limit"), ({"limit": 1001}, "at most 1000"),
                       ({"limit": 1000, "offset": 9001}, "10000"), ({"offset": True}, "offset")):
        with pytest.raises(ConfigError, match=needle) as e:
            idx.search(image=data["q"][0], **{"limit": 5, **kw})
        assert "\n" not in str(e.value)


def test_similar_pages_like_search(tmp_path, data):
    idx = build("memory", tmp_path, data)
    from connectors.base import item_id

    me = item_id("image", "img000")
    first = idx.similar(me, limit=5)
    second = idx.similar(me, limit=5, offset=5)
    both = idx.similar(me, limit=10)
    assert [h.id for h in first.hits + second.hits] == [h.id for h in both.hits]
    # img000's copies tie with it at the top, in id order
    assert [h.id for h in first.hits[:3]] == sorted(h.id for h in first.hits[:3])
