"""Zero-shot object localisation in the relative space (after OneR's localisation property):
crops of a photo at a few scales go through the image encoder in one batch, each crop's
relative vector is scored against a text query's, and every pixel gets the mean score of the
crops that cover it. No training, no detector: only the anchors.

* :func:`crop_boxes`: the grid of crops (pixel boxes) for an image size;
* :func:`heat_map`: crop scores -> a [H, W] map;
* :func:`locate`: image + query vector -> :class:`HeatMap` (``asif-index lab locate``);
* :func:`overlay`: the map blended over the photo, for people;
* :func:`pointing_game`: is the map's maximum inside the named object's box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from asif_index.errors import ConfigError, ShapeError
from asif_index.sparse import SparseBatch

DEFAULT_SCALES: tuple[float, ...] = (0.3, 0.2)
# Scenes, not objects: a crop's mean score against these is subtracted from its score against
# the query, so crops that match every caption-like text (texture, "a photo") stop winning.
BACKGROUND_PROMPTS: tuple[str, ...] = (
    "a photo of grass.", "a photo of the sky.", "a photo of water.", "a photo of a wall.",
    "a photo of trees.", "a photo of the ground.", "a photo of a street.",
    "a photo of a building.", "a photo of sand.", "a photo of snow.")


def crop_boxes(width: int, height: int, scales: Sequence[float] = DEFAULT_SCALES,
               overlap: float = 0.5) -> np.ndarray:
    """Square-ish crops tiling the image at each scale: int64 [n, 4] boxes (x0, y0, x1, y1).

    A crop at scale s is s*width by s*height; neighbours overlap by ``overlap`` of a crop, and
    the last crop in each row and column touches the border, so every pixel is covered at
    every scale."""
    if width < 2 or height < 2:
        raise ShapeError(f"image of {width}x{height} pixels is too small to localise in")
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ConfigError(f"scales must lie in (0, 1]; got {list(scales)}")
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap must lie in [0, 1); got {overlap}")
    out = []
    for s in scales:
        cw, ch = max(2, round(width * s)), max(2, round(height * s))

        def starts(size: int, c: int) -> list[int]:
            step = max(1, round(c * (1 - overlap)))
            xs = list(range(0, size - c + 1, step))
            if xs[-1] != size - c:
                xs.append(size - c)
            return xs

        out += [(x, y, x + cw, y + ch) for y in starts(height, ch) for x in starts(width, cw)]
    return np.asarray(sorted(set(out)), np.int64)


def heat_map(boxes: np.ndarray, scores: np.ndarray, width: int, height: int) -> np.ndarray:
    """float32 [height, width]: each pixel's mean score over the crops covering it."""
    boxes = np.asarray(boxes)
    scores = np.asarray(scores, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(scores):
        raise ShapeError(f"boxes [n, 4] and scores [n] needed; got {boxes.shape} and "
                         f"{scores.shape}")
    total = np.zeros((height + 1, width + 1))
    count = np.zeros((height + 1, width + 1))
    # 2-D difference arrays: O(1) per crop, one cumulative sum at the end
    for (x0, y0, x1, y1), s in zip(boxes, scores):
        for arr, v in ((total, s), (count, 1.0)):
            arr[y0, x0] += v
            arr[y0, x1] -= v
            arr[y1, x0] -= v
            arr[y1, x1] += v
    total = total.cumsum(0).cumsum(1)[:height, :width]
    count = count.cumsum(0).cumsum(1)[:height, :width]
    return (total / np.maximum(count, 1)).astype(np.float32)


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(x, y) of the map's maximum. A flat top (crops overlap, so maxima are plateaus) gives
    the plateau pixel nearest the plateau's centre of mass."""
    top = np.argwhere(heat >= heat.max() - 1e-12 * max(1.0, abs(float(heat.max()))))
    c = top.mean(0)
    y, x = top[np.argmin(((top - c) ** 2).sum(1))]
    return int(x), int(y)


@dataclass
class HeatMap:
    """values: float32 [H, W] in the photo's pixels; boxes [n, 4] and scores [n]: the crops and
    their scores against the query; peak: (x, y) of the maximum."""

    values: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    @property
    def peak(self) -> tuple[int, int]:
        return peak(self.values)


def locate(image: Any, query: SparseBatch, encode: Callable[[list], np.ndarray],
           project: Callable[[np.ndarray], SparseBatch],
           scales: Sequence[float] = DEFAULT_SCALES, overlap: float = 0.5,
           background: SparseBatch | None = None) -> list[HeatMap]:
    """Where in ``image`` is what each query row (e.g. the relative vector of "a dog")
    describes: one :class:`HeatMap` per row of ``query`` [Q, k]. The crops are encoded once
    for all the queries.

    encode: PIL crops -> float32 [n, d_image] (the index's image encoder); project: those
    embeddings -> their relative vectors (the index's anchors, recipe and engine). The image
    is a path, bytes, array or PIL image. background: relative vectors of scene prompts
    (:data:`BACKGROUND_PROMPTS`); each crop's mean score against them is subtracted."""
    from asif_index.encoders.image import load_image

    if len(query) < 1:
        raise ShapeError("locate needs at least one query vector")
    img = load_image(image)
    w, h = img.size
    boxes = crop_boxes(w, h, scales, overlap)
    crops = [img.crop(tuple(int(v) for v in b)) for b in boxes]
    scores = crop_scores(project(encode(crops)), query, background)  # [crops, Q]
    return [HeatMap(heat_map(boxes, scores[:, j], w, h), boxes, scores[:, j])
            for j in range(len(query))]


def crop_scores(crops: SparseBatch, query: SparseBatch, background: SparseBatch | None = None
                ) -> np.ndarray:
    """float64 [n_crops, Q]: each crop's score against each query, less its mean score against
    the background prompts when given."""
    parts = [crops, query] + ([background] if background is not None else [])
    n = int(max(b.indices.max() for b in parts)) + 1
    c = crops.to_csr(n)
    s = (c @ query.to_csr(n).T).toarray()
    if background is not None and len(background):
        s -= (c @ background.to_csr(n).T).toarray().mean(1, keepdims=True)
    return s


def overlay(image: Any, heat: np.ndarray, alpha: float = 0.55):
    """The photo with the map blended over it (red = high), the peak marked: a PIL image."""
    from PIL import Image, ImageDraw

    from asif_index.encoders.image import load_image

    img = load_image(image).convert("RGB")
    if heat.shape != (img.size[1], img.size[0]):
        raise ShapeError(f"map of {heat.shape[::-1]} for an image of {img.size}")
    lo, hi = float(heat.min()), float(heat.max())
    t = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    # a dark-blue -> yellow -> red ramp keeps low areas visible through the blend
    rgb = np.stack([np.clip(2 * t, 0, 1), np.clip(2 - 2 * t, 0, 1) * np.clip(2 * t, 0, 1),
                    np.clip(1 - 2 * t, 0, 1)], -1)
    base = np.asarray(img, np.float32) / 255
    out = Image.fromarray(((1 - alpha) * base + alpha * rgb).clip(0, 1).__mul__(255)
                          .astype(np.uint8))
    x, y = peak(heat)
    r = max(3, min(img.size) // 40)
    d = ImageDraw.Draw(out)
    d.ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=2)
    return out


def inside(point: tuple[int, int], boxes: Sequence[Sequence[float]], tolerance: float = 0.0
           ) -> bool:
    """Is (x, y) within ``tolerance`` pixels of any of the boxes (x0, y0, x1, y1)?"""
    x, y = point
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - x, 0, x - x1)
        dy = max(y0 - y, 0, y - y1)
        if dx * dx + dy * dy <= tolerance * tolerance:
            return True
    return False


def pointing_game(peaks: Sequence[tuple[int, int]], boxes: Sequence[Sequence[Sequence[float]]],
                  tolerance: float = 15.0) -> float:
    """Share of maps whose peak lies within ``tolerance`` pixels of one of its object's boxes
    (the pointing game of Zhang et al., "Top-down Neural Attention by Excitation Backprop",
    which uses 15 pixels)."""
    if len(peaks) != len(boxes):
        raise ShapeError(f"{len(peaks)} peaks for {len(boxes)} box lists")
    if not peaks:
        raise ShapeError("pointing_game needs at least one map")
    return float(np.mean([inside(p, b, tolerance) for p, b in zip(peaks, boxes)]))


def pointing_sweep(photos: Sequence[dict], image_dir, encode: Callable[[list], np.ndarray],
                   project: Callable[[np.ndarray], SparseBatch],
                   text_vectors: Callable[[list[str]], SparseBatch],
                   scale_sets: dict[str, Sequence[float]], templates: Sequence[str],
                   background: SparseBatch | None, overlap: float = 0.5,
                   tolerance: float = 15.0) -> list[dict]:
    """The pointing game over annotated photos for every (scales, template, background on/off).

    photos: [{"image": file name, "objects": [{"query": word, "boxes": [[x0, y0, x1, y1]]}]}]
    (the JSON in asif_index/data); text_vectors: texts -> relative vectors. The crops of the
    union of all scale sets are encoded once per photo and each set reads its own. Rows:
    scales, template, background, hits within ``tolerance`` pixels and inside the box, the
    centre-of-image baseline, crops per photo and encode seconds per photo."""
    import time
    from pathlib import Path

    from asif_index.encoders.image import load_image

    every = sorted({s for ss in scale_sets.values() for s in ss}, reverse=True)
    rows: dict[tuple, list] = {}
    centre_hits, centre_strict, seconds = [], [], []
    for ph in photos:
        img = load_image(Path(image_dir) / ph["image"])
        w, h = img.size
        per_scale = {s: crop_boxes(w, h, (s,), overlap) for s in every}
        boxes = np.concatenate(list(per_scale.values()))
        scale_of = np.concatenate([[s] * len(b) for s, b in per_scale.items()])
        t0 = time.perf_counter()
        vecs = project(encode([img.crop(tuple(int(v) for v in b)) for b in boxes]))
        seconds.append(time.perf_counter() - t0)
        objs = ph["objects"]
        for o in objs:
            centre_hits.append(inside((w // 2, h // 2), o["boxes"], tolerance))
            centre_strict.append(inside((w // 2, h // 2), o["boxes"], 0))
        for tmpl in templates:
            q = text_vectors([tmpl.format(o["query"]) for o in objs])
            for bg in (False, True):
                sc = crop_scores(vecs, q, background if bg else None)
                for name, ss in scale_sets.items():
                    sel = np.isin(scale_of, list(ss))
                    for j, o in enumerate(objs):
                        pk = peak(heat_map(boxes[sel], sc[sel, j], w, h))
                        rows.setdefault((name, tmpl, bg), []).append(
                            (inside(pk, o["boxes"], tolerance), inside(pk, o["boxes"], 0)))
    out = []
    for (name, tmpl, bg), hits in rows.items():
        hits_a = np.asarray(hits)
        out.append({"scales": list(scale_sets[name]), "template": tmpl, "background": bg,
                    "crops": int(sum(len(crop_boxes(224, 224, (s,), overlap))
                                     for s in scale_sets[name])),
                    "objects": len(hits), "hit": float(hits_a[:, 0].mean()),
                    "hit_strict": float(hits_a[:, 1].mean()),
                    "centre_hit": float(np.mean(centre_hits)),
                    "centre_hit_strict": float(np.mean(centre_strict)),
                    "encode_s_per_photo_all_scales": float(np.mean(seconds))})
    return out
