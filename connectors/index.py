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
from connectors.base import AnchorRecord, Filter, Hit, ItemRecord, VectorStore, item_id


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
                 text_encoder: Encoder, **engine_options: Any) -> None:
        self.store = store
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
        man = store.read_manifest()
        if man is None:
            raise CollectionError(
                f"no asif index '{getattr(store, 'name', '?')}' in this {store.backend} database; "
                "create it first (asif-index init)"
            )
        man.check_encoders(image_encoder.name, text_encoder.name,
                           f"{store.backend} index '{getattr(store, 'name', '?')}'")
        stored_version = man.version
        anchors = AnchorSet(man)
        recs = store.fetch_anchors()
        if recs:
            anchors.add(np.stack([r.image for r in recs]), np.stack([r.text for r in recs]),
                        [AnchorPayload(r.caption, r.image_ref, r.source, r.key) for r in recs],
                        ids=np.array([r.id for r in recs], np.uint32))
            anchors.added_at = np.array([r.added_at for r in recs])
        anchors.manifest.version = stored_version  # add() bumped it; the stored one is the truth
        anchors.next_id = max(anchors.next_id, int(man.extra.get("next_id", 0)))
        return cls(store, anchors, image_encoder, text_encoder, **engine_options)

    @property
    def k(self) -> int:
        return self.anchors.manifest.k

    @property
    def p(self) -> float:
        return self.anchors.manifest.p

    # -- anchors -------------------------------------------------------------------------
    def add_anchor_embeddings(self, image_emb: np.ndarray, text_emb: np.ndarray,
                              payloads: list[AnchorPayload]) -> np.ndarray:
        """Append anchor pairs (already embedded) to the set and the database."""
        ids = self.anchors.add(image_emb, text_emb, payloads)
        rows = self.anchors.rows_of(ids)
        self.store.upsert_anchors([
            AnchorRecord(int(i), self.anchors.image[r], self.anchors.text[r], pl.caption,
                         pl.image_ref, pl.source, float(self.anchors.added_at[r]), pl.key)
            for i, r, pl in zip(ids, rows, payloads)])
        self._save_manifest()
        return ids

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

    def _save_manifest(self) -> None:
        man = self.anchors.manifest
        man.extra["next_id"] = int(self.anchors.next_id)
        self.store.write_manifest(man)

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
        out, errors = [], []
        for r in range(len(sb)):
            idx, val = sb.row(r)
            if idx.size == 0:
                errors.append(InputError(
                    f"{modality} item '{keys[r]}' has no anchor with positive similarity; add "
                    "anchors closer to it", keys[r]))
                continue
            order = np.argsort(idx)
            out.append(ItemRecord(item_id(modality, keys[r]), modality, idx[order], val[order],
                                  embeddings[r].astype(np.float32), float(sb.kth_similarity[r]),
                                  self.anchors.version, dict(payloads[r])))
        return out, errors

    def add_items(self, items: Sequence[Any], modality: Literal["image", "text"],
                  payloads: Sequence[dict] | None = None) -> tuple[list[str], list[InputError]]:
        """Embed, project and upsert items; returns (stored ids, skipped errors)."""
        enc = self.encoders[modality]
        res = enc.encode_safe(items)
        payloads = list(payloads) if payloads is not None else [{} for _ in items]
        keys = [enc.content_key(items[i]) or str(items[i]) for i in res.kept]
        recs, errs = self.records(res.embeddings, modality, keys, [payloads[i] for i in res.kept])
        self.store.upsert_items(recs)
        return [r.id for r in recs], res.errors + errs

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
        idx, val = q.row(0)
        return self.store.search(idx, val, limit, filter)

    def search_vectors(self, q: SparseBatch, limit: int, flt: Filter | None = None) -> list[list[Hit]]:
        return [self.store.search(*q.row(r), limit, flt) for r in range(len(q))]

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
        recs = self.store.fetch_items([item])
        if not recs:
            raise InputError(f"no item with id '{item}' in the index", item)
        qi, qv = q.row(0)
        rec = recs[0]
        common, a, b = np.intersect1d(qi, rec.sparse_indices, return_indices=True)
        contrib = qv[a] * rec.sparse_values[b]
        order = np.argsort(-contrib)[:top]
        rows = self.anchors.rows_of(common[order]) if len(order) else []
        out = [{"anchor_id": int(common[o]), "contribution": float(contrib[o]),
                "caption": self.anchors.payloads[r].caption,
                "image_ref": self.anchors.payloads[r].image_ref} for o, r in zip(order, rows)]
        return Explanation(float(contrib.sum()), out)

    def stats(self) -> dict[str, Any]:
        man = self.anchors.manifest
        return {"backend": self.store.backend, "anchors": len(self.anchors),
                "anchor_version": man.version, "k": man.k, "p": man.p,
                "image_encoder": man.image_encoder, "text_encoder": man.text_encoder,
                "items": self.store.count_items(),
                "image_items": self.store.count_items({"modality": "image"}),
                "text_items": self.store.count_items({"modality": "text"})}
