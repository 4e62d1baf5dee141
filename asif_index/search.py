"""Exact in-memory search and zero-shot classification over relative vectors.

This is the reference path: the database connectors must return what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from asif_index.anchors import AnchorSet, Modality
from asif_index.errors import ConfigError, ShapeError
from asif_index.sparse import SparseBatch

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


def score_matrix(queries: SparseBatch, items: SparseBatch) -> np.ndarray:
    """Dot products of relative vectors: float32 [n_queries, n_items]."""
    return queries.dot(items).astype(np.float32)


def rank(queries: SparseBatch, items: SparseBatch, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``limit`` items per query: (scores [Q, l], item positions [Q, l]).

    Order: descending score, ties by ascending item position (the same rule the database
    congruence tests use).
    """
    s = score_matrix(queries, items)
    limit = min(limit, s.shape[1])
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)[:, :limit]
    return np.take_along_axis(s, order, 1), order


@dataclass
class ExactIndex:
    """Items held in memory as relative vectors (either modality), searched exactly."""

    anchors: AnchorSet
    k: int | None = None
    p: float | None = None

    def __post_init__(self) -> None:
        self.vectors: SparseBatch | None = None
        self.modalities: list[str] = []

    def add(self, embeddings: np.ndarray, modality: Modality) -> None:
        v = self.anchors.project(embeddings, modality, self.k, self.p)
        self.vectors = v if self.vectors is None else SparseBatch.concat([self.vectors, v])
        self.modalities.extend([modality] * len(v))

    def search(self, embeddings: np.ndarray, modality: Modality, limit: int = 10):
        if self.vectors is None:
            raise ShapeError("the index is empty; add items first")
        q = self.anchors.project(embeddings, modality, self.k, self.p)
        return rank(q, self.vectors, limit)


def zero_shot_classify(
    anchors: AnchorSet,
    image_embeddings: np.ndarray,
    class_text_embeddings: np.ndarray,
    n_classes: int,
    n_templates: int,
    reduce: Literal["max", "mean"] = "mean",
    k: int | None = None,
    p: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot classification with prompt templates.

    class_text_embeddings: [n_classes * n_templates, d_t], class-major (class c, template t
    at row c * n_templates + t). A class scores the best (``max``) or the mean (``mean``)
    over its templates of the dot product between relative vectors.

    Returns (predicted class [n_images], scores float32 [n_images, n_classes]).
    """
    if reduce not in ("max", "mean"):
        raise ConfigError(f"reduce must be 'max' or 'mean'; got '{reduce}'")
    s = template_scores(anchors, image_embeddings, class_text_embeddings, n_classes,
                        n_templates, k, p)
    scores = s.max(2) if reduce == "max" else s.mean(2)
    return scores.argmax(1), scores


def template_scores(anchors: AnchorSet, image_embeddings: np.ndarray,
                    class_text_embeddings: np.ndarray, n_classes: int, n_templates: int,
                    k: int | None = None, p: float | None = None) -> np.ndarray:
    """Every image's dot product with every (class, template) prompt, float32
    [n_images, n_classes, n_templates]: what :func:`zero_shot_classify` reduces, for callers
    that reduce it more than one way (the images are projected once)."""
    if class_text_embeddings.shape[0] != n_classes * n_templates:
        raise ShapeError(
            f"{class_text_embeddings.shape[0]} prompt embeddings for {n_classes} classes x "
            f"{n_templates} templates"
        )
    img = anchors.project(image_embeddings, "image", k, p)
    txt = anchors.project(class_text_embeddings, "text", k, p)
    return score_matrix(img, txt).reshape(len(img), n_classes, n_templates)


def prompts(labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """Class-major prompt list: for each label, each template filled with it."""
    if not labels:
        raise ConfigError("give at least one class label")
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError("every template must contain '{}' where the label goes")
    return [t.format(lbl) for lbl in labels for t in templates]


def recall_from_scores(scores: np.ndarray, relevant: Sequence[set[int]], ks=(1, 5, 10)
                       ) -> dict[str, float]:
    """:func:`recall_at` of the ranking of scores [Q, N] (descending; ties by position, as
    :func:`rank` orders them)."""
    return recall_at(np.argsort(-scores, axis=1, kind="stable")[:, :max(ks)], relevant, ks)


def hits_at(ranked: np.ndarray, relevant: Sequence[set[int]], ks=(1, 5, 10)
            ) -> dict[str, np.ndarray]:
    """Per query, whether its top-k positions hold a relevant item: bool [Q] per "R@k"; the
    mean over any subset of queries is that subset's recall."""
    return {f"R@{k}": np.array([bool(set(r[:k].tolist()) & rel)
                                for r, rel in zip(ranked, relevant)], bool) for k in ks}


def recall_at(ranked: np.ndarray, relevant: Sequence[set[int]], ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k: share of queries whose top-k positions hold a relevant item."""
    return {key: float(hit.mean()) if len(hit) else 0.0
            for key, hit in hits_at(ranked, relevant, ks).items()}
