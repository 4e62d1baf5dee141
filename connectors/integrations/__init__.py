"""Framework adapters: an asif-index :class:`~connectors.index.Index` as a LlamaIndex or a
LangChain retriever. Each maps the framework's query, filter and result types onto
:meth:`Index.search_result` and the filter model (:mod:`connectors.filters`) and
re-implements nothing; each framework is an optional extra, imported when its adapter is.

- :mod:`connectors.integrations.llamaindex`: ``AsifRetriever`` (``pip install
  'asif-index[llamaindex]'``)
- :mod:`connectors.integrations.langchain`: ``AsifLangChainRetriever`` (``pip install
  'asif-index[langchain]'``)

Neither framework's *vector store* interface fits: both hand the store embeddings made by
the application's own embedding model, while an ASIF index makes its relative vectors from
its anchors (the encoders are the index's); ingest through asif-index, retrieve through the
framework.
"""

from connectors.integrations.common import hit_text, search_hits

__all__ = ["hit_text", "search_hits"]
