"""How the query commands print their results, the same whether the index answered here or a
running service did (``asif_cli.remote``)."""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Sequence


def hit_dict(h) -> dict:
    """A hit as the CLI and the service print it: ``score`` in [0, 1] (what it is ranked
    by) and ``similarity``, the relative vectors' dot product."""
    sim = h.score if getattr(h, "similarity", None) is None else h.similarity
    return {"id": h.id, "score": round(float(h.score), 6), "similarity": round(float(sim), 6),
            "modality": h.modality, "payload": h.payload}


def print_hits(hits, as_json: bool, query: str, qbnorm: float | None = None) -> None:
    """qbnorm: the temperature the hits were normalised at (None: the plain ranking)."""
    if as_json:
        doc = {"query": query, "hits": [hit_dict(h) for h in hits]}
        if qbnorm is not None:
            doc["qbnorm"] = qbnorm
        print(json.dumps(doc))
        return
    if qbnorm is not None:
        print(f"ranked with query-bank normalisation (T={qbnorm:g}): score = the query's share "
              "of each item's matches against the bank; --no-qbnorm for the plain ranking",
              file=sys.stderr)
    if not hits:
        print(f"no results for {query}: the index has no items matching the filter, or none "
              "with a positive similarity (add items, or anchors closer to the query)")
    for h in hits:
        print(f"{h.score:.4f}  {h.modality:5s}  {h.id}  {json.dumps(h.payload)}")


def print_explanation(item: str, ex: Mapping[str, Any], as_json: bool) -> None:
    """ex: score, similarity, temperature, log_z (see connectors.index.Explanation) and
    anchors: dicts with anchor_id, contribution, caption and image_ref."""
    score, sim, T, log_z = ex["score"], ex["similarity"], ex.get("temperature"), ex.get("log_z")
    anchors = ex["anchors"]
    if as_json:
        print(json.dumps({"item": item, "score": round(score, 6), "similarity": round(sim, 6),
                          "temperature": T, "log_z": None if log_z is None else round(log_z, 6),
                          "anchors": list(anchors)}))
        return
    if not anchors:
        print(f"score {score:.4f}: item {item} and the query share no anchor")
        return
    if T is None:
        print(f"score {score:.4f} = similarity, the sum of the shared anchors' contributions:")
    else:
        print(f"score {score:.4f} = 1 / (1 + exp(log Z - s/T)), similarity s {sim:.4f}, "
              f"T {T:g}, item's log Z {log_z:.3f}; s from the shared anchors:")
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
