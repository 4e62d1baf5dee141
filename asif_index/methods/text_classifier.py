"""A classifier trained on text alone and applied to images (after CLOSE, Gu et al., "I Can't
Believe There's No Images! Learning Visual Tasks Using only Language Supervision", ICCV 2023:
train on text embeddings, use on image embeddings, and narrow the gap between the modalities
with Gaussian noise on the text embedding or a shift between their means).

In ASIF's relative space a text and an image are vectors over the same anchor ids, so a head
trained on captions' relative vectors reads photos' relative vectors. The head is a weight per
(anchor id, label): anchors added later carry no weight and removed ones are skipped, so a head
stays usable across live anchor updates (retrain to let new anchors vote).

* :func:`training_sentences`: label names expanded into sentences (templates, and anchor
  captions that mention the label);
* :func:`train_text_head`: noise on the unit text embedding before projection
  (x + N(0, s^2), renormalised) and/or the mean shift between the modalities' relative
  centroids, then a linear (softmax) or class-centroid head;
* :class:`TextHead`: scores, predictions, save/load (npz + json).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from asif_index.errors import ConfigError, InputError, ShapeError
from asif_index.sparse import SparseBatch

HeadKind = Literal["linear", "centroid"]
Mitigation = Literal["none", "noise", "mean-shift", "both"]
MITIGATIONS: tuple[str, ...] = ("none", "noise", "mean-shift", "both")
HEAD_KINDS: tuple[str, ...] = ("linear", "centroid")

TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {} in the picture.",
    "a close-up photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.",
    "a photo of a small {}.", "a photo of a big {}.", "a {} outside.", "a {} on the ground.",
    "there is a {} in this photo.", "a low resolution photo of a {}.", "a bright photo of a {}.",
)


def _mentions(label: str) -> re.Pattern:
    # the label as a word, with a plain plural (dog, dogs; bus, buses)
    return re.compile(r"\b" + re.escape(label.lower()) + r"(s|es)?\b")


def training_sentences(labels: Sequence[str], captions: Sequence[str] = (),
                       templates: Sequence[str] = TRAIN_TEMPLATES, per_label: int = 200,
                       seed: int = 0) -> tuple[list[str], np.ndarray]:
    """(sentences, label index int64 [n]): every template per label, plus up to ``per_label``
    captions that mention exactly one of the labels (a caption naming two labels teaches
    neither)."""
    if len(labels) < 2:
        raise ConfigError(f"a classifier needs at least 2 labels; got {list(labels)}")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"labels repeat: {list(labels)}")
    pats = [_mentions(lb) for lb in labels]
    hits: list[list[str]] = [[] for _ in labels]
    for c in captions:
        found = [i for i, p in enumerate(pats) if p.search(c.lower())]
        if len(found) == 1:
            hits[found[0]].append(c)
    rng = np.random.default_rng(seed)
    sents, ys = [], []
    for i, lb in enumerate(labels):
        mine = [t.format(lb) for t in templates]
        if len(hits[i]) > per_label:
            hits[i] = [hits[i][j] for j in np.sort(rng.choice(len(hits[i]), per_label, False))]
        mine += hits[i]
        sents += mine
        ys += [i] * len(mine)
    return sents, np.asarray(ys, np.int64)


def noisy(emb: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Unit rows plus N(0, scale^2) per coordinate, renormalised (CLOSE's noise injection)."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    if scale > 0:
        x = x + rng.normal(0.0, scale, x.shape)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def leave_one_out_vectors(anchor_matrix: np.ndarray, rows: np.ndarray, k: int, p: float) -> np.ndarray:
    """Dense relative vectors [len(rows), N] of anchors ``rows`` against the other anchors: the
    anchor itself and its exact duplicates (Flickr8k repeats each photo for its five captions)
    are left out, as a new input would not find itself among the anchors."""
    # imported here: the projection module loads torch, and the command line reads this
    # module's constants while building its parser (commands without a model start fast)
    from asif_index.projection import relative_weights

    a = anchor_matrix / np.linalg.norm(anchor_matrix, axis=1, keepdims=True)
    s = a[rows] @ a.T
    s[s > 1 - 1e-6] = -np.inf
    k = min(k, s.shape[1] - 1)
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    out = np.zeros_like(s, dtype=np.float32)
    np.put_along_axis(out, top, relative_weights(np.take_along_axis(s, top, 1), p), 1)
    return out


def modality_shift(image_anchors: np.ndarray, text_anchors: np.ndarray,
                   image_kp: tuple[int, float], text_kp: tuple[int, float],
                   sample: int = 2000, seed: int = 0) -> np.ndarray:
    """Mean image relative vector minus mean text relative vector over a sample of anchor
    pairs, each projected leave-one-out with its side's (k, p): dense float32 [N] over anchor
    rows. Taken off a photo's relative vector it moves the image cloud onto the text cloud a
    text-trained head knows (CLOSE's mean shift, done in the relative space because the two
    encoders' own spaces differ in dimension). Pass the rows the engine searches
    (``AnchorSet.engine_matrix``), so that a centred recipe is centred here too."""
    if len(image_anchors) != len(text_anchors):
        raise ShapeError("image and text anchor matrices must have the same rows")
    rows = np.random.default_rng(seed).choice(len(image_anchors),
                                              min(sample, len(image_anchors)), replace=False)
    shift = np.zeros(len(image_anchors), np.float64)
    for part in np.array_split(rows, max(1, len(rows) // 500)):
        shift += leave_one_out_vectors(image_anchors, part, *image_kp).sum(0)
        shift -= leave_one_out_vectors(text_anchors, part, *text_kp).sum(0)
    return (shift / len(rows)).astype(np.float32)


@dataclass
class TextHead:
    """A label head over relative vectors.

    anchor_ids int64 [D] (sorted): the anchor ids it has weights for; weight float32 [D, C];
    bias float32 [C]; labels: the C label names. ``meta`` records how it was trained (noise,
    mitigation, kind, k, p, encoders, the anchor version)."""

    labels: list[str]
    anchor_ids: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    meta: dict = field(default_factory=dict)
    shift: np.ndarray | None = None  # float32 [D]: image minus text centroid (mean shift)

    def __post_init__(self) -> None:
        if self.weight.shape != (len(self.anchor_ids), len(self.labels)):
            raise ShapeError(f"weight {self.weight.shape} must be [{len(self.anchor_ids)}, "
                             f"{len(self.labels)}] (anchor ids x labels)")
        if self.bias.shape != (len(self.labels),):
            raise ShapeError(f"bias {self.bias.shape} must be [{len(self.labels)}]")
        if self.shift is not None and self.shift.shape != (len(self.anchor_ids),):
            raise ShapeError(f"shift {self.shift.shape} must be [{len(self.anchor_ids)}] (one "
                             "value per anchor id)")

    def scores(self, vectors: SparseBatch, modality: str = "image") -> np.ndarray:
        """Logits float32 [B, C] for relative vectors [B, k]; ids the head does not know (anchors
        added after training) contribute nothing. A mean-shift head first moves image vectors
        onto the text cloud it was trained on: v - shift, clipped at 0, renormalised (the same
        as shifting the training texts towards the images, up to that clip)."""
        pos = np.searchsorted(self.anchor_ids, vectors.indices)
        pos_c = np.minimum(pos, max(len(self.anchor_ids) - 1, 0))
        known = self.anchor_ids[pos_c] == vectors.indices
        v = np.where(known, vectors.values, 0).astype(np.float32)
        if self.shift is None or modality != "image":
            return np.einsum("bk,bkc->bc", v, self.weight[pos_c]) + self.bias
        out = np.empty((len(v), len(self.labels)), np.float32)
        rows = np.arange(len(v))[:, None]
        for lo in range(0, len(v), 256):  # dense rows over every anchor, a block at a time
            hi = min(lo + 256, len(v))
            d = np.zeros((hi - lo, len(self.anchor_ids)), np.float32)
            np.add.at(d, (rows[: hi - lo], pos_c[lo:hi]), v[lo:hi])
            d = np.clip(d - self.shift, 0, None)
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-30)
            out[lo:hi] = d @ self.weight + self.bias
        return out

    def predict(self, vectors: SparseBatch, modality: str = "image"
                ) -> tuple[list[str], np.ndarray]:
        """(label per row, softmax probabilities float32 [B, C])."""
        s = self.scores(vectors, modality).astype(np.float64)
        s -= s.max(1, keepdims=True)
        pr = np.exp(s)
        pr /= pr.sum(1, keepdims=True)
        return [self.labels[i] for i in pr.argmax(1)], pr.astype(np.float32)

    def save(self, path: str | Path) -> Path:
        """``path`` (.npz) with the arrays and a JSON header; written to a temporary name and
        renamed, so a reader never sees half a head."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        extra = {} if self.shift is None else {"shift": self.shift}
        np.savez(tmp, anchor_ids=self.anchor_ids, weight=self.weight, bias=self.bias, **extra,
                 header=np.frombuffer(json.dumps({"labels": self.labels, "meta": self.meta})
                                      .encode(), np.uint8))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TextHead":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no classifier head at '{path}': train one with `asif-index "
                             "train-text-classifier`", str(path))
        try:
            with np.load(path) as z:
                head = json.loads(z["header"].tobytes().decode())
                return cls(head["labels"], z["anchor_ids"], z["weight"], z["bias"],
                           head.get("meta", {}), z["shift"] if "shift" in z.files else None)
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"classifier head '{path}' is unreadable ({e}); retrain it",
                             str(path)) from e


def _train_linear(x, y: np.ndarray, n_classes: int, l2: float, steps: int, seed: int):
    """Softmax regression on a scipy CSR [n, D] with class-balanced loss (full-batch L-BFGS)."""
    import torch

    torch.manual_seed(seed)
    coo = x.tocoo()
    xt = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data.astype(np.float32),
                                 coo.shape, check_invariants=True).coalesce()
    yt = torch.from_numpy(y)
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    cw = torch.from_numpy(counts.sum() / (n_classes * np.maximum(counts, 1)))
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.sparse.mm(xt, w) + b
        loss = torch.nn.functional.cross_entropy(logits, yt, weight=cw) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32)


def train_text_head(
    labels: Sequence[str],
    encode_text: Callable[[list[str]], np.ndarray],
    project_text: Callable[[np.ndarray], SparseBatch],
    anchor_ids: np.ndarray,
    captions: Sequence[str] = (),
    noise: float = 0.04,
    mitigation: Mitigation = "noise",
    kind: HeadKind = "linear",
    shift: np.ndarray | None = None,
    draws: int = 4,
    l2: float = 1e-4,
    steps: int = 100,
    per_label: int = 200,
    seed: int = 0,
) -> TextHead:
    """Train a head on text only.

    encode_text: sentences -> float32 [n, d_text]; project_text: text embeddings -> relative
    vectors (the index's anchors and recipe); anchor_ids [N]: the live anchor ids;
    captions: anchor captions to mine for sentences naming a label. ``mitigation``: "noise"
    (``draws`` noisy copies per sentence at std ``noise``), "mean-shift" (``shift`` [N], from
    :func:`modality_shift`, kept in the head and taken off image vectors when it reads them:
    the text-side shift in CLOSE, moved to the image side so that the training vectors stay
    sparse), "both" or "none". ``kind``:
    "linear" (class-balanced softmax regression, L2 ``l2``) or "centroid" (each label's mean
    training vector, the zero-shot prototype built from more sentences).
    """
    import scipy.sparse as sp

    if mitigation not in MITIGATIONS:
        raise ConfigError(f"unknown mitigation '{mitigation}'; choose from {MITIGATIONS}")
    if kind not in HEAD_KINDS:
        raise ConfigError(f"unknown head kind '{kind}'; choose from {HEAD_KINDS}")
    if not 0 <= noise < 1:
        raise ConfigError(f"noise is a standard deviation per coordinate in [0, 1); got {noise}")
    ids = np.asarray(anchor_ids, np.int64)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    use_noise = mitigation in ("noise", "both") and noise > 0
    use_shift = mitigation in ("mean-shift", "both")
    if use_shift and (shift is None or len(shift) != len(ids)):
        raise ConfigError("mitigation 'mean-shift' needs shift [N] over the anchors "
                          "(modality_shift)")
    sents, y = training_sentences(labels, captions, per_label=per_label, seed=seed)
    emb = encode_text(sents)
    rng = np.random.default_rng(seed)
    blocks, ys = [], []
    for _ in range(draws if use_noise else 1):
        v = project_text(noisy(emb, noise if use_noise else 0.0, rng))
        # columns = positions in the sorted id list
        cols = np.searchsorted(sorted_ids, v.indices)
        m = sp.csr_matrix((v.values.ravel(), cols.ravel(),
                           np.arange(0, v.values.size + 1, v.values.shape[1])),
                          shape=(len(v), len(ids)))
        blocks.append(m)
        ys.append(y)
    x = sp.vstack(blocks).tocsr()
    yy = np.concatenate(ys)
    if kind == "centroid":
        w = np.zeros((len(ids), len(labels)), np.float32)
        for c in range(len(labels)):
            mean = np.asarray(x[yy == c].mean(0)).ravel()
            w[:, c] = mean / max(np.linalg.norm(mean), 1e-30)
        b = np.zeros(len(labels), np.float32)
    else:
        w, b = _train_linear(x, yy, len(labels), l2, steps, seed)
    meta = {"kind": kind, "mitigation": mitigation, "noise": noise if use_noise else 0.0,
            "draws": draws if use_noise else 1, "sentences": len(sents),
            "sentences_per_label": np.bincount(y, minlength=len(labels)).tolist()}
    return TextHead(list(labels), sorted_ids, w, b, meta,
                    shift[order].astype(np.float32) if use_shift else None)
