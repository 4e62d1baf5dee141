"""An asif-index :class:`~connectors.index.Index` as a LlamaIndex retriever.

    from connectors.integrations.llamaindex import AsifRetriever
    retriever = AsifRetriever(index, similarity_top_k=5, modality="image")
    nodes = retriever.retrieve("a dog on the beach")             # text -> photos
    nodes = retriever.retrieve(QueryBundle("", image_path="q.jpg"))  # photo -> photos

Results are ``NodeWithScore``: an ``ImageNode`` (``image_path`` where the photo is now,
``text`` its caption) for an image item, a ``TextNode`` for a text item, ``id_`` the item id,
``score`` the hit's score in [0, 1] (the ranking asif-index uses), ``metadata`` the payload
with ``asif_id``, ``asif_modality``, ``asif_score``, ``asif_similarity`` and
``asif_anchor_version``. Filters: the project's filter model (any form
:func:`connectors.filters.parse` reads) or LlamaIndex ``MetadataFilters`` (EQ, NE, GT, GTE,
LT, LTE, IN, NIN, IS_EMPTY; AND / OR / NOT, nested), mapped onto it; other operators are a
one-line FilterError.
"""

from __future__ import annotations

from typing import Any

from asif_index._optional import require
from asif_index.errors import FilterError
from connectors import filters as flt
from connectors.integrations.common import ImagePaths, hit_metadata, hit_text, search_hits

require("llama_index.core", "the LlamaIndex retriever")
from llama_index.core.retrievers import BaseRetriever  # noqa: E402
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

_OPS = {FilterOperator.EQ: "eq", FilterOperator.NE: "ne", FilterOperator.GT: "gt",
        FilterOperator.GTE: "gte", FilterOperator.LT: "lt", FilterOperator.LTE: "lte",
        FilterOperator.IN: "in", FilterOperator.NIN: "nin"}


def from_metadata_filters(filters: Any) -> flt.Expr | None:
    """LlamaIndex ``MetadataFilters`` (or one ``MetadataFilter``) as the filter model's tree;
    anything else goes to :func:`connectors.filters.parse` as it is."""
    if filters is None:
        return None
    if isinstance(filters, MetadataFilter):
        if filters.operator == FilterOperator.IS_EMPTY:
            return flt.Not(flt.cond(filters.key, "exists"))
        op = _OPS.get(filters.operator)
        if op is None:
            raise FilterError(f"filter on '{filters.key}': LlamaIndex operator "
                              f"{filters.operator.name} has no asif-index equivalent; use one "
                              f"of {', '.join(o.name for o in _OPS)} or IS_EMPTY")
        return flt.cond(filters.key, op, filters.value)
    if isinstance(filters, MetadataFilters):
        parts = [from_metadata_filters(f) for f in filters.filters]
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        cond = filters.condition or FilterCondition.AND
        if cond == FilterCondition.NOT:  # LlamaIndex: none of them holds
            return flt.Not(parts[0] if len(parts) == 1 else flt.Any_(tuple(parts)))
        if len(parts) == 1:
            return parts[0]
        return flt.All(tuple(parts)) if cond == FilterCondition.AND else flt.Any_(tuple(parts))
    return flt.parse(filters)


class AsifRetriever(BaseRetriever):
    """Retrieve items of an asif-index ``Index`` for a text query (``query_str``) or an
    image query (``QueryBundle.image_path``).

    similarity_top_k: hits per query; filters: as the module docstring says; modality:
    "image", "text" or None (both); search_options: passed to ``Index.search_result``
    (``qbnorm``, ``exact``, ``candidates``, ``offset``)."""

    def __init__(self, index, similarity_top_k: int = 10, filters: Any = None,
                 modality: str | None = None, **search_options: Any) -> None:
        super().__init__()
        self._index, self._k, self._modality = index, similarity_top_k, modality
        self._filter = from_metadata_filters(filters)  # a bad filter fails here, not later
        self._options = search_options
        self._paths = ImagePaths(index)

    def _node(self, hit, result) -> NodeWithScore:
        meta = hit_metadata(hit, result)
        if hit.modality == "image":
            node = ImageNode(id_=hit.id, text=hit_text(hit), metadata=meta,
                             image_path=self._paths.of(hit.payload))
        else:
            node = TextNode(id_=hit.id, text=hit_text(hit), metadata=meta)
        return NodeWithScore(node=node, score=float(hit.score))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if query_bundle.image_path:
            query, kind = query_bundle.image_path, "image"
        else:
            query, kind = query_bundle.query_str, "text"
        hits, res = search_hits(self._index, query, kind, self._k, self._filter,
                                self._modality, **self._options)
        return [self._node(h, res) for h in hits]


__all__ = ["AsifRetriever", "from_metadata_filters"]
