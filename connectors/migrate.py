"""Copy an index from one store to another: every anchor and every stored point (all
versions), the manifest last. Used to move an index made with qdrant-client's local mode
(asif-index 0.1's embedded Qdrant) into Qdrant Edge, or between any two backends."""

from __future__ import annotations

import copy
import uuid

from asif_index.errors import CollectionError, ConsistencyError
from connectors.base import VectorStore
from connectors.versioning import JOURNAL, RETENTION


def copy_index(src: VectorStore, dst: VectorStore, batch: int = 512,
               progress=None) -> dict[str, int]:
    """-> counts copied. The target must not exist; the source must have no pending update."""
    man = src.read_manifest()
    if man is None:
        raise CollectionError(f"no asif index '{src.name}' at {src.location}; check the source")
    if src.get_doc(JOURNAL):
        raise ConsistencyError(f"{src.location} has an unfinished anchor update; finish it with "
                               "the version that started it ('anchors status --resume'), then "
                               "migrate")
    if dst.exists():
        raise CollectionError(f"{dst.location} already exists; migrate into a new index name "
                              "or path")
    man = copy.deepcopy(man)
    man.extra["storage"] = dst.storage_version
    man.extra["uid"] = uuid.uuid4().hex  # a new physical index
    man.extra["date_twins"] = True  # every item is rewritten, its date twins with it
    dst.create(man)
    anchors = src.fetch_anchors(None)
    for s in range(0, len(anchors), batch):
        dst.write_anchors(anchors[s:s + batch], "copying anchors")
    points = 0
    for recs in src.scroll_items(batch):
        dst.write_items(recs, "copying items")
        points += len(recs)
        if progress is not None:
            progress(points)
    ret = src.get_doc(RETENTION)
    if ret:
        dst.put_doc(RETENTION, ret)
    dst.switch_manifest(man)
    if dst.count_items() != src.count_items() or len(dst.fetch_anchors(None)) != len(anchors):
        raise CollectionError(f"the copy in {dst.location} does not match {src.location} "
                              "(counts differ); it was left for inspection: drop it and retry")
    return {"anchors": len(anchors), "points": points, "version": man.version}
