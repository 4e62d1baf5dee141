"""The query adapter: an ASIF index stored in a vector database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.encoders.base import Encoder
from asif_index.errors import AnchorError, CollectionError, InputError, ModalityError
from asif_index.search import DEFAULT_TEMPLATES, prompts
from asif_index.sparse import SparseBatch
from connectors.base import Filter, Hit, ItemRecord, VectorStore, item_id, point_records


@dataclass
class Explanation:
    """Why an item matches a query: the shared anchors, largest contribution first."""

    score: float
    anchors: list[dict[str, Any]]


class Index:
    """Anchors + items in one :class:`VectorStore`, with the encoders that made them.

    A fresh process needs only the database: :meth:`open` reloads the anchor matrices from
    the anchors collection and checks the encoders against the stored manifest.
    """

    def __init__(self, store: VectorStore, anchors: AnchorSet, image_encoder: Encoder,
                 text_encoder: Encoder, query_keep: int | None = None,
                 **engine_options: Any) -> None:
        """query_keep: send only the largest ``query_keep`` entries of a query's relative
        vector to the database (fewer posting lists; see benchmarks/pruning.py for the
        recall it costs). None sends all k."""
        self.store = store
        self.query_keep = query_keep
        self.anchors = anchors
        self.encoders = {"image": image_encoder, "text": text_encoder}
        self.engine_options = engine_options

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    def create(cls, store: VectorStore, image_encoder: Encoder, text_encoder: Encoder,
               k: int = 800, p: float = 8.0, recreate: bool = False, **engine_options) -> "Index":
        man = AnchorManifest(image_encoder.name, text_encoder.name, image_encoder.dim,
                             text_encoder.dim, k=k, p=p)
        store.create(man, recreate=recreate)
        return cls(store, AnchorSet(man), image_encoder, text_encoder, **engine_options)

    @classmethod
    def open(cls, store: VectorStore, image_encoder: Encoder, text_encoder: Encoder,
             **engine_options) -> "Index":
        """Open at the live anchor version; queries stay pinned to it until :meth:`refresh`."""
        man = store.read_manifest()
        if man is None:
            raise CollectionError(
                f"no asif index '{getattr(store, 'name', '?')}' in this {store.backend} database; "
                "create it first (asif-index init)"
            )
        man.check_encoders(image_encoder.name, text_encoder.name,
                           f"{store.backend} index '{getattr(store, 'name', '?')}'")
        idx = cls(store, anchors_at(store, man, man.version), image_encoder, text_encoder,
                  **engine_options)
        return idx

    def refresh(self) -> None:
        """Move to the live anchor version (after another process updated the anchors)."""
        man = self.store.read_manifest()
        if man is not None and man.version != self.version:
            self.anchors = anchors_at(self.store, man, man.version)

    @property
    def version(self) -> int:
        return self.anchors.manifest.version

    @property
    def k(self) -> int:
        return self.anchors.manifest.k

    @property
    def p(self) -> float:
        return self.anchors.manifest.p

    # -- anchors -------------------------------------------------------------------------
    def add_anchor_embeddings(self, image_emb: np.ndarray, text_emb: np.ndarray,
                              payloads: list[AnchorPayload]) -> np.ndarray:
        """Append anchor pairs (already embedded) as a new anchor version; stored items are
        brought to exactly the state a rebuild would give (see ``connectors.updates``)."""
        from connectors.updates import update_anchors

        return update_anchors(self, add=(image_emb, text_emb, payloads)).added_ids

    def remove_anchors(self, ids) -> "object":
        from connectors.updates import update_anchors

        return update_anchors(self, remove=np.asarray(ids, np.int64))

    def add_anchors(self, images: Sequence[Any], captions: Sequence[str],
                    refs: Sequence[str] | None = None, source: str = "") -> tuple[np.ndarray, list[InputError]]:
        """Embed and append pairs; pairs with a bad image or caption are skipped and returned."""
        if len(images) != len(captions):
            raise AnchorError(f"{len(images)} images but {len(captions)} captions")
        refs = list(refs) if refs is not None else [str(x) if isinstance(x, str) else "" for x in images]
        ri = self.encoders["image"].encode_safe(images)
        rt = self.encoders["text"].encode_safe([captions[i] for i in ri.kept])
        kept = [ri.kept[j] for j in rt.kept]
        pl = [AnchorPayload(captions[i], refs[i], source) for i in kept]
        ids = self.add_anchor_embeddings(ri.embeddings[rt.kept], rt.embeddings, pl)
        return ids, ri.errors + rt.errors

    # -- items --------------------------------------------------------------------------
    def project(self, embeddings: np.ndarray, modality: str) -> SparseBatch:
        if modality not in ("image", "text"):
            raise ModalityError(f"modality must be 'image' or 'text'; got '{modality}'")
        return self.anchors.project(embeddings, modality, **self.engine_options)

    def records(self, embeddings: np.ndarray, modality: str, keys: Sequence[str],
                payloads: Sequence[dict]) -> tuple[list[ItemRecord], list[InputError]]:
        """Project embeddings [n, d] into item records; rows with an all-zero relative vector
        (no anchor with positive similarity) are reported, not stored."""
        sb = self.project(embeddings, modality)
        recs = point_records(sb, [item_id(modality, k) for k in keys], modality, embeddings,
                             payloads, self.version)
        errors = [InputError(f"{modality} item '{key}' has no anchor with positive similarity; "
                             "add anchors closer to it", key)
                  for key, r in zip(keys, recs) if r.sparse_indices.size == 0]
        return [r for r in recs if r.sparse_indices.size], errors

    def add_items(self, items: Sequence[Any], modality: Literal["image", "text"],
                  payloads: Sequence[dict] | None = None) -> tuple[list[str], list[InputError]]:
        """Embed, project and upsert items; returns (stored ids, skipped errors)."""
        enc = self.encoders[modality]
        res = enc.encode_safe(items)
        payloads = list(payloads) if payloads is not None else [{} for _ in items]
        keys = [enc.content_key(items[i]) or str(items[i]) for i in res.kept]
        recs, errs = self.records(res.embeddings, modality, keys, [payloads[i] for i in res.kept])
        self.write(recs)
        return [r.item for r in recs], res.errors + errs

    def write(self, records: list[ItemRecord]) -> tuple[int, int]:
        """Upsert item records; an item that already has a current point is updated in that
        point. -> (new, updated) distinct items."""
        from connectors.updates import check_no_pending_update

        check_no_pending_update(self.store)
        records = list({r.item: r for r in records}.values())
        heads = self.store.heads([r.item for r in records])
        for r in records:
            h = heads.get(r.item)
            if h is not None:
                r.id, r.valid_from = h.id, h.valid_from
        self.store.upsert_items(records)
        return len(records) - len(heads), len(heads)

    # -- queries ------------------------------------------------------------------------
    def _query_vector(self, text: str | None, image: Any) -> tuple[SparseBatch, str]:
        if (text is None) == (image is None):
            raise ModalityError("give exactly one of text=... or image=...")
        modality = "text" if text is not None else "image"
        if modality == "text" and not isinstance(text, str):
            raise ModalityError(f"text= takes a string; got {type(text).__name__} (use image=)")
        emb = self.encoders[modality].encode([text if text is not None else image])
        return self.project(emb, modality), modality

    def search(self, text: str | None = None, image: Any = None, limit: int = 10,
               filter: Filter | None = None) -> list[Hit]:
        """Items (either modality, narrowed by ``filter``) ranked for a text or image query."""
        q, _ = self._query_vector(text, image)
        return self.search_vectors(q, limit, filter)[0]

    def search_vectors(self, q: SparseBatch, limit: int, flt: Filter | None = None) -> list[list[Hit]]:
        return [self.store.search(*self._pruned(*q.row(r)), limit, flt, self.version)
                for r in range(len(q))]

    def _pruned(self, idx: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = self.query_keep
        if not m or len(val) <= m:
            return idx, val
        top = np.argpartition(-val, m - 1)[:m]
        return idx[top], val[top]

    def classify(self, images: Sequence[Any], labels: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES,
                 reduce: Literal["max", "mean"] = "mean") -> tuple[list[str], np.ndarray]:
        """Zero-shot labels for images (computed against the stored anchors)."""
        from asif_index.search import zero_shot_classify

        img = self.encoders["image"].encode(images)
        txt = self.encoders["text"].encode(prompts(labels, templates))
        pred, scores = zero_shot_classify(self.anchors, img, txt, len(labels), len(templates),
                                          reduce, self.k, self.p)
        return [labels[i] for i in pred], scores

    def explain(self, item: str, text: str | None = None, image: Any = None,
                top: int = 10) -> Explanation:
        """The shared anchors behind a query-item score, with their captions."""
        q, _ = self._query_vector(text, image)
        rec = self.item(item)
        qi, qv = q.row(0)
        common, a, b = np.intersect1d(qi, rec.sparse_indices, return_indices=True)
        contrib = qv[a] * rec.sparse_values[b]
        order = np.argsort(-contrib)[:top]
        rows = self.anchors.rows_of(common[order]) if len(order) else []
        out = [{"anchor_id": int(common[o]), "contribution": float(contrib[o]),
                "caption": self.anchors.payloads[r].caption,
                "image_ref": self.anchors.payloads[r].image_ref} for o, r in zip(order, rows)]
        return Explanation(float(contrib.sum()), out)

    def item(self, item: str) -> ItemRecord:
        """The point of a logical item visible at this index's version."""
        h = self.store.heads([item]).get(item)
        if h is None or not h.visible(self.version):
            for batch in self.store.scroll_items(version=self.version):
                for r in batch:
                    if r.item == item:
                        return r
            raise InputError(f"no item with id '{item}' in the index", item)
        return h

    def stats(self) -> dict[str, Any]:
        man = self.anchors.manifest
        return {"backend": self.store.backend, "anchors": len(self.anchors),
                "anchor_version": man.version, "k": man.k, "p": man.p,
                "image_encoder": man.image_encoder, "text_encoder": man.text_encoder,
                "items": self.store.count_items(version=self.version),
                "image_items": self.store.count_items({"modality": "image"}, self.version),
                "text_items": self.store.count_items({"modality": "text"}, self.version),
                "stored_points": self.store.count_items()}


def anchors_at(store: VectorStore, man: AnchorManifest, version: int) -> AnchorSet:
    """The anchor set as it was at ``version``, rebuilt from the anchors collection."""
    import copy

    man = copy.deepcopy(man)
    anchors = AnchorSet(man)
    recs = store.fetch_anchors(version)
    if recs:
        anchors.add(np.stack([r.image for r in recs]), np.stack([r.text for r in recs]),
                    [AnchorPayload(r.caption, r.image_ref, r.source, r.key) for r in recs],
                    ids=np.array([r.id for r in recs], np.uint32))
        anchors.added_at = np.array([r.added_at for r in recs])
    anchors.manifest.version = version  # add() bumped it
    anchors.next_id = max(anchors.next_id, int(man.extra.get("next_id", 0)))
    return anchors
