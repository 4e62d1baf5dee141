"""Other tools reading an index: the documented plain-client recipes (pymilvus on a Milvus
Lite server, qdrant-client on a Qdrant server when ASIF_QDRANT_URL is set) see exactly the
live items and rank them as asif-index does, and ``index export`` round-trips them."""

import json

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.methods.qbnorm_fold import FOLD_DIM
from asif_index.recipe import PUBLISHED
from connectors.index import Index
from tests.stores import make_store
from tests.test_congruence import DI, DT, FakeEncoder

N_ITEMS = 40


def build(kind, tmp_path, name="interop"):
    """An index with history: superseded points (an anchor update re-projected items) and a
    deleted item, so a reader that ignores the version fence sees too much."""
    rng = np.random.default_rng(3)

    def unit(n, d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    store = make_store(kind, tmp_path, name)
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=10, p=8.0,
                       recipe=PUBLISHED)
    idx.add_anchor_embeddings(unit(60, DI), unit(60, DT), [AnchorPayload(f"c{i}")
                                                           for i in range(60)])
    recs, _ = idx.records(unit(N_ITEMS, DI), "image", [f"im{i}" for i in range(N_ITEMS)],
                          [{"n": i, "album": "alps" if i % 2 else "beach"}
                           for i in range(N_ITEMS)])
    idx.write(recs)
    idx.add_anchor_embeddings(unit(20, DI), unit(20, DT), [AnchorPayload(f"d{i}")
                                                           for i in range(20)])
    idx.delete_items([recs[0].item])
    idx.refresh()
    live = {r.item: r for b in idx.store.scroll_items(version=idx.version) for r in b}
    assert len(live) == N_ITEMS - 1
    assert idx.store.count_items() > len(live)  # superseded points are still stored
    return idx, live, unit


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_round_trips_the_live_items(kind, fmt, tmp_path, capfd):
    from connectors.export import export_items

    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    idx, live, _ = build(kind, tmp_path)
    out = tmp_path / f"items.{fmt}"
    assert export_items(idx.store, idx.version, out) == len(live)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    else:
        rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["id"] for r in rows} == set(live)
    for r in rows:
        rec = live[r["id"]]
        keep = np.asarray(rec.sparse_indices) != FOLD_DIM
        assert r["indices"] == np.asarray(rec.sparse_indices)[keep].tolist()
        np.testing.assert_allclose(r["values"], np.asarray(rec.sparse_values)[keep], rtol=1e-6)
        np.testing.assert_allclose(r["embedding"], rec.embedding, rtol=1e-6)
        assert json.loads(r["payload"]) == rec.payload and r["anchor_version"] == idx.version
        assert r["modality"] == "image"
    from asif_index.errors import ConfigError

    with pytest.raises(ConfigError, match=".parquet or .jsonl"):
        export_items(idx.store, idx.version, tmp_path / "items.csv")
    assert not list(tmp_path.glob(".items*"))  # no partial file left


def test_pymilvus_reads_and_searches_the_live_items_as_documented(tmp_path):
    """docs/interop.md, Milvus: collection NAME_items, live filter vfrom <= V and vto > V,
    sparse field 'rel', user fields under payload["..."]."""
    pytest.importorskip("milvus_lite")
    from pymilvus import MilvusClient

    idx, live, unit = build("milvus-lite", tmp_path, "photos")
    v = idx.version
    client = MilvusClient(uri=str(tmp_path / "milvus.db"))
    fence = f"vfrom <= {v} and vto > {v}"
    rows = client.query("photos_items", filter=fence, output_fields=["item", "payload"],
                        limit=1000)
    assert {r["item"] for r in rows} == set(live)
    assert {r["item"] for r in client.query("photos_items", filter=f'{fence} and '
                                            f'payload["album"] == "alps"',
                                            output_fields=["item"], limit=1000)} == \
        {i for i, r in live.items() if r.payload["album"] == "alps"}
    q = idx.project(unit(1, DI), "image")
    qi, qv = q.row(0)
    res = client.search("photos_items", data=[{int(a): float(w) for a, w in zip(qi, qv)}],
                        anns_field="rel", filter=fence, limit=5, output_fields=["item"],
                        search_params={"metric_type": "IP"})[0]
    want = idx.search_vectors(q, 5, exact=True)[0]
    assert [r["entity"]["item"] for r in res] == [h.id for h in want]
    np.testing.assert_allclose([r["distance"] for r in res], [h.score for h in want],
                               rtol=1e-5)


def test_qdrant_client_reads_and_searches_the_live_items_as_documented(tmp_path):
    """docs/interop.md, Qdrant server: collection NAME_items, live filter asif_from <= V <
    asif_to, sparse vector 'rel', item id in payload asif_item."""
    idx, live, unit = build("qdrant-server", tmp_path, f"photos{np.random.randint(1e9)}")
    from qdrant_client import QdrantClient, models as m

    import os

    client = QdrantClient(url=os.environ["ASIF_QDRANT_URL"],
                          api_key=os.environ.get("ASIF_QDRANT_API_KEY"))
    v = idx.version
    fence = m.Filter(must=[m.FieldCondition(key="asif_from", range=m.Range(lte=v)),
                           m.FieldCondition(key="asif_to", range=m.Range(gt=v))])
    name = f"{idx.store.name}_items"
    pts, _ = client.scroll(name, scroll_filter=fence, limit=1000, with_payload=True)
    assert {p.payload["asif_item"] for p in pts} == set(live)
    q = idx.project(unit(1, DI), "image")
    qi, qv = q.row(0)
    res = client.query_points(name, query=m.SparseVector(indices=qi.tolist(),
                                                         values=qv.tolist()),
                              using="rel", query_filter=fence, limit=5).points
    assert [p.payload["asif_item"] for p in res] == [h.id for h in
                                                     idx.search_vectors(q, 5, exact=True)[0]]
    idx.store.drop()
