"""The stages of a normalised (QB-Norm) search, which :class:`connectors.index.Index` calls.

* **Folded** (an index whose manifest has ``qbnorm_fold``): hits are ranked by
  ``s(q, x) + fold(x)`` (``asif_index.methods.qbnorm_fold``) over the whole collection in the
  database, or over the plain ranking's top C re-scored with the fold value each hit carries
  (:func:`folded`); the scores are mapped back to ``s/T - log Z``: no stored vector is read,
  no bank is touched.
* **Re-ranked** (an index made before folding, or a temperature other than the folded one):
  the database's plain top ``CANDIDATES`` are read back and re-scored against a query bank.

Both normalise only a single-modality query's results of the other modality by default (the
bank holds queries of the query's modality; same-modality rankings lose with it): when a
same-modality item reaches the top, the plain ranking is returned instead.

**One score.** Every hit's ``score`` is a relevance in [0, 1], the number every entry point
ranks by and shows (CLI, API, ``/search``, ``/explain``, the web page):

* plain ranking: the relative vectors' dot product ``s`` (unit vectors with non-negative
  entries, so in [0, 1]);
* normalised ranking: :func:`relevance` of the normalised score, ``exp(s/T) / (exp(s/T) +
  Z(x))`` with ``Z(x) = sum_b exp(s(b, x)/T)`` over the query bank: the query's share of the
  item's match mass against every bank query, so an item every query matches (a hub) scores
  low however high its ``s``. It is a monotone map of ``s/T - log Z``, so the order is the
  normalised one; :func:`log_odds` maps back.

``similarity`` always carries ``s``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from asif_index.anchors import AnchorSet
from asif_index.sparse import SparseBatch
from asif_index.errors import ConfigError
from asif_index.methods.qbnorm_fold import FOLD_DIM
from connectors.base import Filter, Hit, candidate_entries, two_stage_keep

# Candidates the first stage hands to exact rescoring: CANDIDATE_BASE at 10^4 visible items,
# growing as N^CANDIDATE_GROWTH (the count a fixed recall needs grew so in benchmarks/scale.py),
# never fewer than CANDIDATES_PER_HIT per requested hit. The recall each gives is measured
# there and in docs/benchmarks.md.
CANDIDATE_BASE = 500
CANDIDATE_GROWTH = 0.4
CANDIDATES_PER_HIT = 20
MAX_CANDIDATES = 16384  # Milvus' top-k ceiling, and far past where rescoring stops paying
# The query's largest entries the first stage searches with (None: all). Qdrant's rescoring
# costs about 100 ns per query entry per candidate (benchmarks/scale.py), so the first stage
# must rank well enough that few candidates suffice: the whole query does (a 128-entry query
# needed 4x the candidates for the same recall on the synthetic benchmark).
QUERY_KEEP: int | None = None


def candidate_count(n_items: int, limit: int) -> int:
    """The first stage's candidates for a collection of ``n_items`` visible items."""
    c = int(np.ceil(CANDIDATE_BASE * (max(n_items, 1) / 1e4) ** CANDIDATE_GROWTH))
    return int(min(MAX_CANDIDATES, max(c, CANDIDATES_PER_HIT * limit)))


def _count(value: Any, limit: int, name: str) -> int:
    """A caller's candidate count from ``limit`` to MAX_CANDIDATES, or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not limit <= value <= MAX_CANDIDATES:
        raise ConfigError(f"{name} must be a whole number from the limit ({limit}) to "
                          f"{MAX_CANDIDATES}; got {value!r}")
    return int(value)


def check_candidates(candidates: Any, limit: int) -> int | None:
    """A caller's candidate count (None: chosen by collection size), or a one-line error."""
    return None if candidates is None else _count(candidates, limit, "candidates (--candidates)")


def ranked(index: "Index", indices: np.ndarray, values: np.ndarray, limit: int,
           flt: Filter | None, version: int, exact: bool = False,
           candidates: int | None = None) -> list[Hit]:
    """The database's ranking of one query row: two stages (candidates on the trimmed
    vectors, exact rescoring with the full ones) where the index has candidate vectors and
    the collection is larger than the candidate count; else the exact single stage."""
    keep = two_stage_keep(index.anchors.manifest)
    if exact or not keep:
        return index.store.search(indices, values, limit, flt, version)
    n = index.item_count(version)
    c = max(limit, candidates if candidates is not None else candidate_count(n, limit))
    if c >= n:  # the candidates would be the collection: one exact stage is cheaper
        return index.store.search(indices, values, limit, flt, version)
    anchor = np.asarray(indices) != FOLD_DIM
    cand = (np.asarray(indices)[anchor], np.asarray(values)[anchor])
    if QUERY_KEEP is not None:
        cand = candidate_entries(*cand, QUERY_KEEP)
    return index.store.search_two_stage((indices, values), cand, c, limit, flt, version)

# Folded QB-Norm, two ways. The whole collection ranked by s + fold(x) in the database, the
# fold sent as a query entry (exact; that entry's posting list holds every item), or the
# plain ranking's top C re-scored by adding the fold value each hit carries (C payload reads;
# exact on the hits it returns, but the folded top 10 need not lie in the plain top C).
# FOLD_RESCORE: the default C, None for the whole collection. benchmarks/scale.py measures
# both (fold_rescore_sweep): on its synthetic collections the plain top 100 held only 0.83 of
# the folded top 10 at 3x10^4 items, so the exact whole-collection fold stays the default.
FOLD_RESCORE: int | None = None


def check_fold_candidates(fold_candidates: Any, limit: int) -> int | None:
    """A caller's re-scoring count (None: :data:`FOLD_RESCORE`), or a one-line error."""
    if fold_candidates is None:
        return FOLD_RESCORE
    return _count(fold_candidates, limit, "fold_candidates")


def folded(index: "Index", indices: np.ndarray, values: np.ndarray, limit: int,
           flt: Filter | None, version: int, exact: bool = False,
           candidates: int | None = None, fold_candidates: int | None = None) -> list[Hit]:
    """One query row ranked by ``s(q, x) + fold(x)``: over the whole collection (the fold
    as a query entry; always with ``exact``), or with ``fold_candidates`` C over the plain
    ranking's top C re-scored (every returned hit's score is its exact folded score).
    ``candidates``: the plain ranking's own first stage, as in :func:`ranked`."""
    from dataclasses import replace

    from asif_index.methods.qbnorm_fold import fold_query

    if not exact and fold_candidates is not None:
        hits = ranked(index, indices, values, max(limit, fold_candidates), flt, version,
                      candidates=candidates)
        if all(h.fold is not None for h in hits):  # else an item without one: rank them all
            scored = [replace(h, score=float(np.float32(h.score) + np.float32(h.fold)))
                      for h in hits]
            scored.sort(key=lambda h: (-h.score, h.id))
            return scored[:limit]
    return ranked(index, *fold_query(indices, values), limit, flt, version, exact=exact,
                  candidates=candidates)


if TYPE_CHECKING:
    from connectors.index import Index, SearchResult

# Paging: a page is a slice of one deterministic order, (score desc, item id asc), so pages
# neither skip nor repeat a hit even where the engine breaks ties differently per call.
MAX_DEPTH = 10_000  # offset + limit; past it a filter narrows better than paging does
MAX_LIMIT = 1000


def check_page(limit: Any, offset: Any) -> tuple[int, int]:
    """(limit, offset), or a one-line error naming the bad one."""
    for name, v, lo in (("limit", limit, 1), ("offset", offset, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} (--{name}) must be a whole number >= {lo}; got {v!r}")
    if limit > MAX_LIMIT:
        raise ConfigError(f"limit (--limit) is at most {MAX_LIMIT}; got {limit} (page with "
                          "--offset)")
    if offset + limit > MAX_DEPTH:
        raise ConfigError(f"offset + limit is at most {MAX_DEPTH}; got {offset} + {limit} "
                          "(narrow the search with a filter instead)")
    return int(limit), int(offset)


def paged(fetch: Callable[[int], "SearchResult"], limit: int, offset: int) -> "SearchResult":
    """Hits ``offset`` .. ``offset + limit`` of the order (score desc, id asc).

    ``fetch(n)``: the search's top ``n``. One hit past the page is fetched; where it ties the
    page's last score, the tie group may reach past what was fetched, so the fetch doubles
    until the last fetched hit scores strictly lower (or the results run out)."""
    from dataclasses import replace

    end = offset + limit
    want = end + 1
    while True:
        res = fetch(min(want, MAX_DEPTH + 1))
        hits = res.hits
        if len(hits) < want or want > MAX_DEPTH or len(hits) < end \
                or hits[-1].score < min(h.score for h in hits[:end]):
            break
        want *= 2
    order = sorted(hits, key=lambda h: (-h.score, h.id))
    return replace(res, hits=order[offset:end])


def normalised(index: "Index", anchors: AnchorSet, q: SparseBatch, modality: str, limit: int,
               flt: Filter | None, query_keep: Any, version: int, temperature: float,
               explicit: bool, exact: bool = False, candidates: int | None = None
               ) -> "SearchResult":
    """Hits of a one-row text or image query ``q`` (projected at ``version``) ranked by
    ``s/T - log Z``; ``explicit``: the caller asked for this temperature (normalise whatever
    the hits' modality), else the recipe's default."""
    from connectors.index import SearchResult

    fold = anchors.fold
    if fold is not None and abs(fold.temperature - temperature) <= 1e-12 * temperature:
        hits = index.search_vectors(q, limit, flt, query_keep, version=version, fold=True,
                                    exact=exact, candidates=candidates)[0]
        if all(h.modality != modality and h.fold is not None for h in hits):
            return SearchResult(unfold(hits, fold), modality, version, temperature)
        if not explicit:
            plain = index.search_vectors(q, limit, flt, query_keep, version=version,
                                         exact=exact, candidates=candidates)[0]
            return SearchResult(plain, modality, version, None)
    return reranked(index, anchors, q, modality, limit, flt, query_keep, version, temperature,
                    explicit, exact, candidates)


def relevance(normalised: float) -> float:
    """A normalised score ``s/T - log Z`` -> the hit's score in [0, 1] (the logistic
    function, computed without overflow)."""
    x = float(normalised)
    if x >= 0:
        return 1.0 / (1.0 + float(np.exp(-x)))
    e = float(np.exp(x))
    return e / (1.0 + e)


def log_odds(score: float) -> float:
    """:func:`relevance`'s inverse: a normalised hit's score -> ``s/T - log Z``."""
    p = float(score)
    return float(np.log(p) - np.log1p(-p))


def unfold(hits: list[Hit], fold) -> list[Hit]:
    """Folded database hits (score s + fold(x)) -> relevance scores, similarity s."""
    return [Hit(h.id, relevance(fold.normalised(h.score)), h.modality, h.payload,
                float(np.float32(h.score) - np.float32(h.fold)))
            for h in hits]


def reranked(index: "Index", anchors: AnchorSet, q: SparseBatch, modality: str, limit: int,
             flt: Filter | None, query_keep: Any, version: int, temperature: float,
             explicit: bool, exact: bool = False, candidates: int | None = None
             ) -> "SearchResult":
    """The database's plain top candidates re-scored against the query bank (the folded
    index's frozen bank, else the version's)."""
    from asif_index.methods.qbnorm import CANDIDATES
    from connectors.index import SearchResult

    hits = index.search_vectors(q, max(CANDIDATES, limit), flt, query_keep, version=version,
                                exact=exact, candidates=candidates)[0]
    if not hits or (not explicit and any(h.modality == modality for h in hits)):
        return SearchResult(hits[:limit], modality, version, None)
    recs = index._stored(hits, version)
    bank = (anchors.fold.bank(modality) if anchors.fold is not None
            else index._bank(anchors, modality))
    scores = bank.rescore([h.score for h in hits],
                          [(r.sparse_indices, r.sparse_values) for r in recs], temperature)
    order = np.lexsort((np.arange(len(hits)), -scores))[:limit]
    return SearchResult([Hit(hits[i].id, relevance(scores[i]), hits[i].modality,
                             hits[i].payload, hits[i].score) for i in order],
                        modality, version, float(temperature))


__all__ = ["candidate_count", "check_candidates", "check_fold_candidates", "check_page", "folded",
           "log_odds", "normalised", "paged", "ranked", "relevance", "reranked", "unfold"]
