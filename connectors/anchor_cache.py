"""A local copy of an index's anchor matrices, so that opening an index does not read every
anchor back from the database (30,000 pairs took tens of seconds).

Keyed by (backend, location, the index's creation uid, anchor version). An anchor version
never changes once it is live (updates write version V+1 beside it), so a copy that matches
the manifest the database holds now is that version's anchor set. Copies of older versions
of the same index are deleted when a newer one is written; a damaged copy is ignored and
rewritten. The cache is an optimisation only: any failure falls back to the database.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

from asif_index.anchors import AnchorManifest, AnchorSet
from asif_index.errors import AnchorError
from connectors.base import VectorStore
from connectors.versioning import anchors_at, attach_fold

KEEP = 2  # versions kept per index (the live one and the one readers may still pin)


def index_key(store: VectorStore, man: AnchorManifest) -> str | None:
    """A short stable name of one index (store, location, creation uid) for files kept beside
    it; None for an index made before uids."""
    uid = man.extra.get("uid")
    if not uid:
        return None  # an index made before uids: read from the database
    return hashlib.sha1(f"{store.backend}|{store.location}|{uid}".encode()).hexdigest()[:16]


def cached_anchors_at(store: VectorStore, man: AnchorManifest, version: int,
                      cache_dir: str | Path | None) -> AnchorSet:
    """The anchor set at ``version``: from the local copy when it is there, else from the
    database (and then copied)."""
    prefix = index_key(store, man) if cache_dir else None
    if prefix is None:
        return anchors_at(store, man, version)
    root = Path(cache_dir) / "anchors"
    d = root / f"{prefix}-v{version}"
    try:
        s = AnchorSet.load(d)
        if s.manifest.version == version and s.manifest.extra.get("uid") == man.extra["uid"]:
            s.manifest = copy.deepcopy(man)
            s.manifest.version = version
            s.next_id = max(s.next_id, int(man.extra.get("next_id", 0)))
            return attach_fold(store, s)
    except (AnchorError, OSError, ValueError, KeyError, TypeError):
        pass  # missing or damaged copy: read the database
    s = anchors_at(store, man, version)
    try:
        s.save(d)
        older = sorted(root.glob(f"{prefix}-v*"), key=lambda p: int(p.name.rsplit("-v", 1)[1]))
        for p in older[:-KEEP]:
            shutil.rmtree(p, ignore_errors=True)
    except (OSError, ValueError):
        pass  # a read-only or full cache folder only costs the next open its speed
    return s
