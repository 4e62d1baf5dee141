"""The LlamaIndex and LangChain adapters return what Index.search returns, map each filter
operator onto the filter model (checked against the reference evaluation), and take image
queries. Run against Qdrant Edge with the real framework packages."""

import numpy as np
import pytest

from asif_index.errors import FilterError
from connectors import filters

llama = pytest.importorskip("llama_index.core", reason="needs the [llamaindex] extra")
pytest.importorskip("langchain_core", reason="needs the [langchain] extra")
pytest.importorskip("qdrant_edge")

from llama_index.core.schema import ImageNode, QueryBundle, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from connectors.integrations.langchain import AsifLangChainRetriever  # noqa: E402
from connectors.integrations.llamaindex import AsifRetriever, from_metadata_filters  # noqa: E402


@pytest.fixture(scope="module")
def index(encoders, tmp_path_factory):
    from asif_index.sample_data import sample_pairs
    from connectors import Index
    from connectors.qdrant_edge import QdrantEdgeStore
    from PIL import Image

    root = tmp_path_factory.mktemp("frameworks")
    arrays, captions, labels = sample_pairs()
    paths = []
    for i, a in enumerate(arrays):
        p = root / f"{i:02d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    idx = Index.create(QdrantEdgeStore("fw", path=str(root / "edge")), *encoders, k=12)
    idx.add_anchors(paths[:28], captions[:28])
    idx.add_items(paths[28:], "image", [{"path": str(p), "label": labels[28 + i], "n": i,
                                         **({"album": "alps" if i % 2 else "beach"}
                                            if i % 3 else {})}
                                        for i, p in enumerate(paths[28:])])
    idx.add_items(captions[28:], "text", [{"caption": c, "n": 100 + i}
                                          for i, c in enumerate(captions[28:])])
    yield idx, paths
    from connectors import close_embedded

    close_embedded()


def mf(key, value, op):
    return MetadataFilter(key=key, value=value, operator=op)


LLAMA_FILTERS = [
    (MetadataFilters(filters=[mf("album", "alps", FilterOperator.EQ)]), {"album": "alps"}),
    (MetadataFilters(filters=[mf("album", "alps", FilterOperator.NE)]),
     {"album": {"ne": "alps"}}),
    (MetadataFilters(filters=[mf("n", 3, FilterOperator.GT), mf("n", 9, FilterOperator.LTE)]),
     {"n": {"gt": 3, "lte": 9}}),
    (MetadataFilters(filters=[mf("n", 5, FilterOperator.LT), mf("n", 102, FilterOperator.GTE)],
                     condition=FilterCondition.OR), {"or": [{"n": {"lt": 5}},
                                                           {"n": {"gte": 102}}]}),
    (MetadataFilters(filters=[mf("album", ["alps", "x"], FilterOperator.IN)]),
     {"album": ["alps", "x"]}),
    (MetadataFilters(filters=[mf("album", ["alps"], FilterOperator.NIN)]),
     {"album": {"nin": ["alps"]}}),
    (MetadataFilters(filters=[mf("album", None, FilterOperator.IS_EMPTY)]),
     {"not": {"album": {"exists": True}}}),
    (MetadataFilters(filters=[mf("album", "beach", FilterOperator.EQ)],
                     condition=FilterCondition.NOT), {"not": {"album": "beach"}}),
    (MetadataFilters(filters=[mf("n", 100, FilterOperator.GTE), MetadataFilters(
        filters=[mf("album", "alps", FilterOperator.EQ), mf("n", 2, FilterOperator.LT)],
        condition=FilterCondition.OR)], condition=FilterCondition.OR),
     {"or": [{"n": {"gte": 100}}, {"or": [{"album": "alps"}, {"n": {"lt": 2}}]}]}),
]


def reference(idx, expr):
    return {r.item for b in idx.store.scroll_items(version=idx.version) for r in b
            if filters.matches(expr, r.payload, r.modality)}


def test_llamaindex_filters_map_onto_the_filter_model(index):
    idx, _ = index
    for mfs, ours in LLAMA_FILTERS:
        assert from_metadata_filters(mfs) == filters.parse(ours), ours
        want = reference(idx, filters.parse(ours))
        assert want, ours  # every case selects something
        got = AsifRetriever(idx, similarity_top_k=100, filters=mfs).retrieve("a photo")
        assert {n.node.id_ for n in got} == want, ours
    with pytest.raises(FilterError, match="TEXT_MATCH"):
        AsifRetriever(idx, filters=MetadataFilters(filters=[mf("label", "c", FilterOperator.TEXT_MATCH)]))
    with pytest.raises(FilterError):
        AsifRetriever(idx, filters={'x"] or 1': 1})


def test_llamaindex_nodes_are_the_index_hits(index):
    idx, paths = index
    want = idx.search_result(text="a cat", limit=5, filter={"modality": "image"})
    got = AsifRetriever(idx, similarity_top_k=5, modality="image").retrieve("a cat")
    assert [n.node.id_ for n in got] == [h.id for h in want.hits]
    assert [n.score for n in got] == pytest.approx([h.score for h in want.hits])
    for n, h in zip(got, want.hits):
        assert isinstance(n.node, ImageNode) and n.node.image_path == h.payload["path"]
        assert n.node.metadata["label"] == h.payload["label"]
        assert n.node.metadata["asif_anchor_version"] == want.anchor_version
        assert 0 <= n.score <= 1 + 1e-6
    texts = AsifRetriever(idx, similarity_top_k=3, modality="text").retrieve("a cat")
    assert texts and all(isinstance(n.node, TextNode) and n.node.text for n in texts)
    # an image query: the photo itself first, in the order Index.search gives
    q = QueryBundle("", image_path=str(paths[30]))
    like = AsifRetriever(idx, similarity_top_k=4, modality="image").retrieve(q)
    assert [n.node.id_ for n in like] == [h.id for h in idx.search(
        image=paths[30], limit=4, filter={"modality": "image"})]
    assert like[0].node.image_path == str(paths[30])


def test_langchain_documents_are_the_index_hits(index):
    idx, paths = index
    r = AsifLangChainRetriever(index=idx, k=5, modality="image")
    docs = r.invoke("a cat")
    want = idx.search(text="a cat", limit=5, filter={"modality": "image"})
    assert [d.id for d in docs] == [h.id for h in want]
    assert [d.metadata["asif_score"] for d in docs] == pytest.approx([h.score for h in want])
    assert all(d.metadata["asif_image_path"] == h.payload["path"] for d, h in zip(docs, want))
    # filters: the retriever's and a per-call one, ANDed; each as the reference has it
    for ours in (o for _, o in LLAMA_FILTERS):
        got = AsifLangChainRetriever(index=idx, k=100, filter=ours).invoke("a photo")
        assert {d.id for d in got} == reference(idx, filters.parse(ours)), ours
    both = AsifLangChainRetriever(index=idx, k=100, filter={"n": {"lt": 8}}).invoke(
        "a photo", filter={"album": "alps"})
    assert {d.id for d in both} == reference(idx, filters.parse({"n": {"lt": 8},
                                                                "album": "alps"}))
    with pytest.raises(FilterError):
        AsifLangChainRetriever(index=idx, filter={"n": {"near": 3}})
    by_photo = AsifLangChainRetriever(index=idx, k=3, modality="image",
                                      query_kind="image").invoke(str(paths[31]))
    assert [d.id for d in by_photo] == [h.id for h in idx.search(
        image=paths[31], limit=3, filter={"modality": "image"})]
    texts = AsifLangChainRetriever(index=idx, k=2, modality="text").invoke("a cat")
    assert all(d.page_content and d.metadata["asif_modality"] == "text" for d in texts)
    assert np.all([d.metadata["n"] >= 100 for d in texts])
