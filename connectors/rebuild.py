"""Full rebuilds (new k, p) into a new physical index, and the alias records that switch
readers to it in one write."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from asif_index.errors import ConfigError
from connectors.base import AnchorRecord, VectorStore
from connectors.versioning import reproject

if TYPE_CHECKING:  # the encoders (torch) load only when a rebuild runs
    from connectors.index import Index


def rebuild(index: "Index", target: VectorStore, k: int | None = None, p: float | None = None,
            image_encoder=None, text_encoder=None, batch: int = 512,
            progress: "Callable[[int], None] | None" = None, recipe=None) -> "tuple[Index, int]":
    """Re-project every item into a new index (new k, p, recipe) from the stored raw
    embeddings. -> (the new index, items written). New encoders need the items' sources:
    re-ingest. progress: called with the number of items written so far, after every batch.
    recipe: an ``asif_index.recipe.Recipe`` (default: the index's own); a rebuild recomputes
    its statistics from the current anchors."""
    man = index.anchors.manifest
    if (image_encoder or text_encoder) is not None:
        raise ConfigError("a rebuild with new encoders needs the items' sources: re-ingest them "
                          "into a new index (asif-index init + ingest) and switch the alias")
    from connectors.index import Index

    new = Index.create(target, index.encoders["image"], index.encoders["text"],
                       k=k or man.k, p=p or man.p, recreate=True,
                       recipe=index.anchors.recipe if recipe is None else recipe,
                       **index.engine_options)
    src = index.anchors
    new.anchors.add(src.image, src.text, list(src.payloads), ids=src.ids)
    target.write_anchors([AnchorRecord(int(i), src.image[r], src.text[r], pl.caption,
                                        pl.image_ref, pl.source, float(src.added_at[r]), pl.key)
                           for r, (i, pl) in enumerate(zip(src.ids, src.payloads))])
    new.anchors.manifest.version = 0
    new.anchors.manifest.extra["next_id"] = int(src.next_id)
    freeze_fold(new)
    target.switch_manifest(new.anchors.manifest)
    n = 0
    for recs in index.store.scroll_items(batch, version=index.version):
        for mod in ("image", "text"):
            group = [r for r in recs if r.modality == mod]
            if not group:
                continue
            out = reproject(new.anchors, group, mod, 0, new.engine_options)
            target.write_items(out, "writing the rebuilt index")
            n += len(out)
        if progress is not None:
            progress(n)
    return new, n


def freeze_fold(index: "Index") -> None:
    """A rebuilt index folds QB-Norm with a bank frozen from its (current) anchors."""
    from asif_index.methods.qbnorm import BANK_STRIDE
    from asif_index.methods.qbnorm_fold import FOLD_KEY, FoldSpec, QBNormFold

    anchors = index.anchors
    T = anchors.recipe.qbnorm
    anchors.manifest.extra.pop(FOLD_KEY, None)
    anchors.fold = None
    if T is None or not len(anchors):
        return
    spec = FoldSpec.freeze(anchors, T, BANK_STRIDE)
    anchors.manifest.extra[FOLD_KEY] = spec.to_dict()
    anchors.fold = QBNormFold(spec, lambda: anchors, index.engine_options)


def set_alias(registry: VectorStore, alias: str, physical: str) -> None:
    """Point ``alias`` at a physical index name: one single-row write, so every reader that
    resolves the alias afterwards sees the new index whole."""
    registry.put_doc(f"alias:{alias}", {"physical": physical, "at": time.time()})


def resolve_alias(registry: VectorStore, alias: str) -> str:
    doc = registry.get_doc(f"alias:{alias}") if registry.exists() else None
    return doc["physical"] if doc else alias
