"""How an item point is laid out in Qdrant, shared by the server (qdrant-client) and the
embedded (Qdrant Edge) stores: one layout, so an index moves between them unchanged.

Vectors: ``rel`` (sparse relative vector), ``emb_image`` / ``emb_text`` (raw embedding).
Payload: the user's fields plus the reserved ``asif_*`` fields below.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asif_index.methods.qbnorm_fold import split_fold, with_fold
from connectors.base import Hit, ItemRecord
from connectors.filters import date_twins

RESERVED = {"asif_modality", "asif_kth", "asif_item", "asif_from", "asif_to", "asif_fold"}
RESERVED_PREFIX = "asif_"
# qdrant-edge-py 0.9 reads MatchValue(True) as the integer 1, which never matches a stored
# boolean: each boolean field is also kept as a keyword ("true"/"false") under this prefix,
# and Qdrant Edge filters booleans on that twin.
BOOL_TWIN = "asif_b_"


def payload_key(field: str) -> str:
    """Where a filter field lives in a point's payload (``modality`` is a reserved field)."""
    return "asif_modality" if field == "modality" else field


def item_payload(it: ItemRecord) -> dict[str, Any]:
    payload = {k: v for k, v in it.payload.items() if not k.startswith(RESERVED_PREFIX)}
    payload.update({f"{BOOL_TWIN}{k}": "true" if v else "false"
                    for k, v in it.payload.items() if isinstance(v, bool)})
    payload.update(date_twins(payload))
    payload.update(asif_modality=it.modality, asif_kth=float(it.kth_similarity),
                   asif_item=it.item, asif_from=int(it.valid_from), asif_to=int(it.valid_to))
    if it.fold is not None:  # also in the vector (FOLD_DIM); here so that hits carry it
        payload["asif_fold"] = float(it.fold)
    return payload


def stored_rel(it: ItemRecord) -> tuple[list[int], list[float]]:
    """The ``rel`` sparse vector as stored: the anchor entries and the fold entry."""
    idx, val = with_fold(it.sparse_indices, it.sparse_values, it.fold)
    return np.asarray(idx).tolist(), np.asarray(val, np.float32).tolist()


def point_hit(point) -> Hit:
    """A Hit from a scored point of either client (its payload carries the reserved fields)."""
    pl = point.payload
    f = pl.get("asif_fold")
    return Hit(pl["asif_item"], float(point.score), pl["asif_modality"], user_payload(pl),
               fold=None if f is None else float(f))


def user_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if not k.startswith(RESERVED_PREFIX)}


def item_record(point) -> ItemRecord:
    """An ItemRecord from a retrieved point of either client (id, payload, vector dict)."""
    pl = point.payload
    mod = pl["asif_modality"]
    rel = point.vector["rel"]
    idx, val, fold = split_fold(np.asarray(rel.indices, np.int64),
                                np.asarray(rel.values, np.float32))
    return ItemRecord(str(point.id), pl["asif_item"], mod, idx, val,
                      np.asarray(point.vector[f"emb_{mod}"], np.float32), float(pl["asif_kth"]),
                      int(pl["asif_from"]), int(pl["asif_to"]), user_payload(pl), fold)


# Qdrant scores every point a filter admits one by one (no inverted index) while the filter's
# estimated cardinality is below the sparse index's full_scan_threshold (default 5,000). Every
# search carries the live-version filter, which admits nearly every point, so below that size
# each search scored every point: 20 ms at 3,000 tuned image items (800-entry text queries)
# against 1 ms unfiltered. The inverted index with the filter checked per hit: 0.8 ms.
SPARSE_FULL_SCAN = 1
