"""An asif-index :class:`~connectors.index.Index` as a LangChain retriever.

    from connectors.integrations.langchain import AsifLangChainRetriever
    retriever = AsifLangChainRetriever(index=index, k=5, modality="image")
    docs = retriever.invoke("a dog on the beach")                       # text -> photos
    by_photo = AsifLangChainRetriever(index=index, k=5, query_kind="image")
    docs = by_photo.invoke("query.jpg")                                 # photo -> photos

Each result is a ``Document``: ``id`` the item id, ``page_content`` the caption or text (a
photo without one: its file name), ``metadata`` the payload with ``asif_id``,
``asif_modality``, ``asif_score`` (in [0, 1], the ranking), ``asif_similarity``,
``asif_anchor_version`` and, for a photo, ``asif_image_path`` where it is now. ``filter``: the
project's filter model (``{"year": {"gte": 2010}}``, ``{"or": [...]}``), validated when the
retriever is made; a per-call ``filter=`` (``invoke(q, filter=...)``) is ANDed with it.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from asif_index._optional import require
from connectors import filters as flt
from connectors.integrations.common import ImagePaths, hit_metadata, hit_text, search_hits

require("langchain_core", "the LangChain retriever")
from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import ConfigDict, Field  # noqa: E402


class AsifLangChainRetriever(BaseRetriever):
    """k: hits per query; modality: "image", "text" or None (both); query_kind: "text"
    (the query is words) or "image" (the query is an image path); search_options: passed to
    ``Index.search_result`` (``qbnorm``, ``exact``, ``candidates``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    k: int = Field(10, ge=1, le=1000)
    filter: Any = None
    modality: Optional[Literal["image", "text"]] = None
    query_kind: Literal["text", "image"] = "text"
    search_options: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        # parsed before pydantic sees it: a bad filter is the project's one-line FilterError
        data["filter"] = flt.parse(data.get("filter"))
        super().__init__(**data)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        expr = flt._and([self.filter, flt.parse(kwargs.get("filter"))])
        hits, res = search_hits(self.index, query, self.query_kind, int(kwargs.get("k", self.k)),
                                expr, self.modality, **self.search_options)
        paths = ImagePaths(self.index)
        docs = []
        for h in hits:
            meta = hit_metadata(h, res)
            if h.modality == "image" and (p := paths.of(h.payload)) is not None:
                meta["asif_image_path"] = p
            docs.append(Document(id=h.id, page_content=hit_text(h), metadata=meta))
        return docs


__all__ = ["AsifLangChainRetriever"]
