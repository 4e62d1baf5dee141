"""One modality-agnostic space (after OneR, "a unified vision-language space that encodes both
modalities at once"): in ASIF's relative space dimension i means anchor pair i whatever the
input's modality, so one collection holds images and texts and any of them can query any other.

* :func:`compose`: a weighted query from several relative vectors ("this photo, but at night"):
  each part is a unit relative vector, the weighted sum is L2-normalised again, so a part's
  weight is its share of the query whatever the modality's typical magnitudes;
* :func:`any_to_any`: T2I, I2T, I2I, T2T recall in one mixed collection and the gap between the
  two cross-modal directions (Flickr8k dev in ``asif-index eval unified``);
* :func:`modality_gap`: how far apart the image and text clouds sit in the relative space.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from asif_index.errors import ConfigError, ShapeError
from asif_index.sparse import SparseBatch

# The image's share of a composed image + text query. An image's relative vector matches its
# own modality far more strongly than a caption matches it (the modality gap), so an equal
# split behaves like the image alone; on Flickr8k dev (`asif-index eval unified`) a share
# of 0.1-0.2 finds both the photo and the caption's target most often.
DEFAULT_IMAGE_WEIGHT = 0.15

# Words too common in captions to say what two photos share.
_STOP = frozenset(
    "a an the and or of in on at to with by for from into onto over under near while is are "
    "was were be being been his her their its it he she they them this that these those one two "
    "three some other another each up down out off through as there here who which front "
    "background camera something very large small big little young".split())


def compose(parts: Sequence[tuple[SparseBatch, float]]) -> SparseBatch:
    """One query from weighted relative vectors.

    parts: (batch [B, k_j], weight) pairs, every batch with the same B rows (row r of each is
    one composed query). Weights must be finite and not all zero; a negative weight steers
    away from that part. Returns [B, <= sum k_j] rows: the weighted sum over the union of
    anchor ids, negatives clipped (as in a relative vector), L2-normalised, sorted by
    descending value and padded with zeros. ``kth_similarity`` is NaN: a composed vector is a
    query, not an item whose k-th anchor an update could beat.
    """
    if not parts:
        raise ConfigError("compose needs at least one (vector, weight) part")
    rows = {len(b) for b, _ in parts}
    if len(rows) != 1:
        raise ShapeError(f"compose: every part needs the same number of rows; got {sorted(rows)}")
    w = np.array([float(x) for _, x in parts])
    if not np.isfinite(w).all() or not np.any(w):
        raise ConfigError(f"compose: weights must be finite and not all zero; got {w.tolist()}")
    n = rows.pop()
    width = sum(b.indices.shape[1] for b, _ in parts)
    idx = np.zeros((n, width), np.int64)
    val = np.zeros((n, width), np.float32)
    for r in range(n):
        ids = np.concatenate([b.indices[r] for b, _ in parts])
        vs = np.concatenate([b.values[r].astype(np.float64) * wi for (b, _), wi in zip(parts, w)])
        uniq, inv = np.unique(ids, return_inverse=True)
        s = np.zeros(len(uniq))
        np.add.at(s, inv, vs)
        s = np.maximum(s, 0.0)
        norm = np.linalg.norm(s)
        if norm == 0:
            raise ConfigError(f"compose: row {r} cancels out (no positive entry left); lower "
                              "the negative weights")
        order = np.argsort(-s, kind="stable")
        m = len(order)
        idx[r, :m] = uniq[order]
        val[r, :m] = (s[order] / norm).astype(np.float32)
    return SparseBatch(idx, val, np.full(n, np.nan, np.float32))


def _recall(scores: np.ndarray, relevant: Sequence[set[int]], ks: Sequence[int]) -> dict:
    """R@k from scores [Q, I] (ranked by score, ties by item position)."""
    from asif_index.search import recall_from_scores

    return recall_from_scores(scores, relevant, ks)


def content_words(caption: str) -> set[str]:
    """Lower-case words of a caption, stop words dropped and a plural 's' removed."""
    words = re.findall(r"[a-z]+", caption.lower())
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in words if w not in _STOP and len(w) > 2}


def consensus_words(captions: Sequence[str], min_captions: int = 3) -> set[str]:
    """Content words that at least ``min_captions`` of one image's captions use: what the
    annotators agreed the photo shows."""
    counts: dict[str, int] = {}
    for c in captions:
        for w in content_words(c):
            counts[w] = counts.get(w, 0) + 1
    return {w for w, n in counts.items() if n >= min_captions}


def image_relevance(captions_per_image: Sequence[Sequence[str]], min_shared: int = 2,
                    min_captions: int = 3) -> list[set[int]]:
    """I2I ground truth from captions alone: two photos are relevant to each other when their
    consensus word sets share at least ``min_shared`` words (e.g. {dog, ball}, {man, bike})."""
    sets = [consensus_words(c, min_captions) for c in captions_per_image]
    out = []
    for i, s in enumerate(sets):
        out.append({j for j, t in enumerate(sets) if j != i and len(s & t) >= min_shared})
    return out


def modality_gap(image: SparseBatch, text: SparseBatch, n_cols: int | None = None) -> dict:
    """The gap between the image and text clouds of relative vectors.

    image [n_i, k], text [n_t, k]: unit relative vectors over the same anchor ids. Returns
    ``centroid_distance`` (Euclidean distance of the two clouds' means), ``centroid_cosine``,
    ``image_nn_is_text`` (share of images whose nearest other vector among both is a text),
    ``text_nn_is_image`` and the chance levels of those two shares (the other modality's
    share of the pool).
    """
    if len(image) < 2 or len(text) < 2:
        raise ShapeError("modality_gap needs at least 2 images and 2 texts")
    n = n_cols or int(max(image.indices.max(), text.indices.max())) + 1
    a, b = image.to_csr(n), text.to_csr(n)
    ca = np.asarray(a.mean(0)).ravel()
    cb = np.asarray(b.mean(0)).ravel()
    both = SparseBatch.concat([image, text]).to_csr(n)
    s = (both @ both.T).toarray()
    np.fill_diagonal(s, -np.inf)
    nn = s.argmax(1)
    ni = len(image)
    return {
        "centroid_distance": float(np.linalg.norm(ca - cb)),
        "centroid_cosine": float(ca @ cb / (np.linalg.norm(ca) * np.linalg.norm(cb))),
        "image_nn_is_text": float(np.mean(nn[:ni] >= ni)),
        "text_nn_is_image": float(np.mean(nn[ni:] < ni)),
        "chance_image_nn_is_text": len(text) / (len(both.indptr) - 2),
        "chance_text_nn_is_image": ni / (len(both.indptr) - 2),
    }


def any_to_any(image: SparseBatch, text: SparseBatch, text_image: np.ndarray,
               captions_per_image: Sequence[Sequence[str]], ks: Sequence[int] = (1, 5, 10)
               ) -> dict:
    """Every direction of search in one mixed collection of relative vectors.

    image [n_i, k]: one vector per photo; text [n_t, k]: one per caption; text_image [n_t]:
    the photo each caption describes; captions_per_image: the captions of each photo (for
    the I2I ground truth). Each direction ranks only the target modality (a filter on the
    modality payload), the query itself left out:

    * T2I / I2T: the caption's photo / any caption of the photo;
    * T2T: the other captions of the same photo;
    * I2I: photos whose captions agree on at least two content words (:func:`image_relevance`),
      with its chance level (the mean share of relevant photos);
    * ``gap_R@k``: T2I minus I2T, how unevenly the shared space serves the two directions.
    """
    text_image = np.asarray(text_image)
    if len(text_image) != len(text):
        raise ShapeError(f"text_image has {len(text_image)} entries for {len(text)} texts")
    if len(captions_per_image) != len(image):
        raise ShapeError(f"captions_per_image has {len(captions_per_image)} entries for "
                         f"{len(image)} images")
    n = int(max(image.indices.max(), text.indices.max())) + 1
    a, b = image.to_csr(n), text.to_csr(n)
    ti = (b @ a.T).toarray()
    ii = (a @ a.T).toarray()
    tt = (b @ b.T).toarray()
    np.fill_diagonal(ii, -np.inf)
    np.fill_diagonal(tt, -np.inf)
    caps_of: list[set[int]] = [set() for _ in range(len(image))]
    for t, i in enumerate(text_image):
        caps_of[int(i)].add(t)
    i2i_rel = image_relevance(captions_per_image)
    with_rel = [q for q in range(len(image)) if i2i_rel[q]]
    out = {
        "T2I": _recall(ti, [{int(i)} for i in text_image], ks),
        "I2T": _recall(ti.T, caps_of, ks),
        "T2T": _recall(tt, [caps_of[int(i)] - {t} for t, i in enumerate(text_image)], ks),
        "I2I": _recall(ii[with_rel], [i2i_rel[q] for q in with_rel], ks),
        "I2I_queries": len(with_rel),
        "I2I_chance_relevant": float(np.mean([len(i2i_rel[q]) / (len(image) - 1)
                                              for q in with_rel])) if with_rel else 0.0,
    }
    c = out["I2I_chance_relevant"]
    out["I2I_chance"] = {f"R@{k}": 1 - (1 - c) ** k for k in ks}
    for k in ks:
        out[f"gap_R@{k}"] = out["T2I"][f"R@{k}"] - out["I2T"][f"R@{k}"]
    return out


def composition_curve(image: SparseBatch, text: SparseBatch, text_image: np.ndarray,
                      weights: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), queries: int = 500,
                      limit: int = 10, seed: int = 0) -> list[dict]:
    """How a composed query blends its parts: photo A (weight w) plus a caption of another
    photo B (weight 1 - w), searched over the photos. For each w: the share of queries with A
    in the top ``limit``, with B there, and with both. A working composition moves smoothly
    from B to A and finds both for middle weights more often than either part alone.

    image [n_i, k], text [n_t, k], text_image [n_t] as in :func:`any_to_any`."""
    rng = np.random.default_rng(seed)
    text_image = np.asarray(text_image)
    q_img = rng.choice(len(image), min(queries, len(image)), replace=False)
    q_txt = np.array([rng.choice(np.flatnonzero(text_image != a)) for a in q_img])
    b_img = text_image[q_txt]
    n = int(max(image.indices.max(), text.indices.max())) + 1
    items = image.to_csr(n)
    out = []
    for w in weights:
        parts = [(image.take(q_img), w), (text.take(q_txt), 1.0 - w)]
        q = compose([pt for pt in parts if pt[1] != 0])
        s = (q.to_csr(n) @ items.T).toarray()
        top = np.argsort(-s, axis=1, kind="stable")[:, :limit]
        has_a = (top == q_img[:, None]).any(1)
        has_b = (top == b_img[:, None]).any(1)
        out.append({"image_weight": float(w), "photo_found": float(has_a.mean()),
                    "caption_target_found": float(has_b.mean()),
                    "both_found": float((has_a & has_b).mean())})
    return out
