"""How the query commands print their results, the same whether the index answered here or a
running service did (``asif_cli.remote``)."""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Sequence


def hit_dict(h) -> dict:
    d = {"id": h.id, "score": round(float(h.score), 6), "modality": h.modality,
         "payload": h.payload}
    if getattr(h, "similarity", None) is not None:  # a re-ranked hit's dot product
        d["similarity"] = round(float(h.similarity), 6)
    return d


def print_hits(hits, as_json: bool, query: str, qbnorm: float | None = None) -> None:
    """qbnorm: the temperature the hits were re-ranked at (None: the plain ranking)."""
    if as_json:
        doc = {"query": query, "hits": [hit_dict(h) for h in hits]}
        if qbnorm is not None:
            doc["qbnorm"] = qbnorm
        print(json.dumps(doc))
        return
    if qbnorm is not None:
        print(f"re-ranked by query-bank normalisation (T={qbnorm:g}; scores are normalised "
              "scores); --no-qbnorm for the plain ranking", file=sys.stderr)
    if not hits:
        print(f"no results for {query}: the index has no items matching the filter, or none "
              "with a positive similarity (add items, or anchors closer to the query)")
    for h in hits:
        print(f"{h.score:.4f}  {h.modality:5s}  {h.id}  {json.dumps(h.payload)}")


def print_explanation(item: str, score: float, anchors: Sequence[Mapping[str, Any]],
                      as_json: bool) -> None:
    """anchors: dicts with anchor_id, contribution, caption and image_ref."""
    if as_json:
        print(json.dumps({"item": item, "score": round(score, 6), "anchors": list(anchors)}))
    elif not anchors:
        print(f"score 0: item {item} and the query share no anchor")
    else:
        print(f"score {score:.4f}, from the shared anchors:")
        for a in anchors:
            print(f"  {a['contribution']:.4f}  anchor {a['anchor_id']}: {a['caption']}  "
                  f"({a['image_ref']})")


def print_prediction(image: str, label: str, scores: Mapping[str, float],
                     labels: Sequence[str], as_json: bool) -> None:
    """One classified image: its label and every label's score (JSON), or the best three."""
    if as_json:
        print(json.dumps({"image": image, "label": label,
                          "scores": {n: round(float(scores[n]), 6) for n in labels}}))
    else:
        best = ", ".join(f"{n} {scores[n]:.3f}" for n in sorted(labels, key=lambda n: -scores[n])[:3])
        print(f"{image}\t{label}\t({best})")
