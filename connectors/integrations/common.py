"""What both adapters share: one search call and one reading of a hit."""

from __future__ import annotations

from typing import Any

from asif_index.errors import ConfigError
from connectors import filters as flt


def search_hits(index, query: Any, kind: str, limit: int, filter: Any = None,
                modality: str | None = None, **search_options) -> tuple[list, Any]:
    """(hits, SearchResult) of ``Index.search_result`` for a text query (``kind="text"``)
    or an image query (``kind="image"``: a path, PIL image or array), with the filter model's
    filter (any form :func:`connectors.filters.parse` reads) narrowed to ``modality``."""
    if kind not in ("text", "image"):
        raise ConfigError(f"query kind is 'text' or 'image'; got {kind!r}")
    expr = flt.with_modality(flt.parse(filter), modality)
    res = index.search_result(**{kind: query}, limit=limit, filter=expr, **search_options)
    return res.hits, res


def hit_text(hit) -> str:
    """The words a framework shows for a hit: its caption or text, else its file name."""
    p = hit.payload
    for k in ("caption", "text"):
        if isinstance(p.get(k), str) and p[k]:
            return p[k]
    return str(p.get("path") or p.get("url") or hit.id)


class ImagePaths:
    """Where stored photos are now (their paths resolved against the index's image roots,
    read once), for the frameworks' image fields."""

    def __init__(self, index) -> None:
        self._index, self._roots = index, None

    def of(self, payload: dict) -> str | None:
        from connectors.image_roots import resolve, roots_of

        if self._roots is None:
            self._roots = roots_of(self._index.store)
        try:
            p = resolve(payload, self._roots)
        except ConfigError:  # a root no longer recorded: no path to give
            return None
        return None if p is None else str(p)


def hit_metadata(hit, result) -> dict[str, Any]:
    """A hit's payload with what asif-index knows about it (reserved names prefixed)."""
    return {**hit.payload, "asif_id": hit.id, "asif_modality": hit.modality,
            "asif_score": hit.score,
            "asif_similarity": hit.score if hit.similarity is None else hit.similarity,
            "asif_anchor_version": result.anchor_version}


__all__ = ["ImagePaths", "hit_metadata", "hit_text", "search_hits"]
