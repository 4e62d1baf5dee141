"""What the read-only commands need, without encoders or torch: the live anchor set (from the
local anchor cache when it is there) and an index's counts. ``Index.stats`` is built on the same
function, so the command line's fast path and the Python API print the same figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asif_index.anchors import AnchorManifest, AnchorSet
from asif_index.errors import CollectionError
from connectors.anchor_cache import cached_anchors_at
from connectors.base import VectorStore


def live_manifest(store: VectorStore) -> AnchorManifest:
    """The manifest of the live anchor version; a missing index is an error naming it."""
    man = store.read_manifest()
    if man is None:
        raise CollectionError(
            f"no asif index '{getattr(store, 'name', '?')}' in "
            f"{store.location.split(' at ')[-1]}; create it with 'asif-index init' (or check "
            "--name)")
    return man


def live_anchors(store: VectorStore, cache_dir: str | Path | None) -> AnchorSet:
    """The live anchor set (ids, payloads and matrices), read from the local cache keyed by
    the manifest when possible."""
    man = live_manifest(store)
    return cached_anchors_at(store, man, man.version, cache_dir)


def index_stats(store: VectorStore, anchors: AnchorSet) -> dict[str, Any]:
    """Counts and manifest of an index at the anchors' version."""
    man = anchors.manifest
    v = man.version
    return {"backend": store.backend, "anchors": len(anchors),
            "anchor_version": v, "k": man.k, "p": man.p, "recipe": anchors.recipe.name,
            "image_encoder": man.image_encoder, "text_encoder": man.text_encoder,
            "items": store.count_items(version=v),
            "image_items": store.count_items({"modality": "image"}, v),
            "text_items": store.count_items({"modality": "text"}, v),
            "stored_points": store.count_items()}


__all__ = ["index_stats", "live_anchors", "live_manifest"]
