"""Incremental anchor ingestion: an index whose anchors know nothing of three classes learns
them live. Old queries keep their answers; the new concepts become findable. No retraining,
no re-ingest: stored items are re-projected exactly, only those the new anchors touch.

    python examples/incremental_anchors.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NEW_DOMAIN = ("moon", "coins", "eye")


def rank_of(idx, label: str) -> int:
    """Position (1-based) of the class's held-out photo for the query 'a photo of <label>'."""
    hits = idx.search(text=f"a photo of {label}", limit=50, filter={"modality": "image"})
    labels = [h.payload["label"] for h in hits]
    return labels.index(label) + 1 if label in labels else len(labels) + 1


def main(argv=None) -> dict:
    from examples._sample import sample_split

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=Path, default=Path("asif-demo-images"))
    a = ap.parse_args(argv)

    from asif_index.config import AsifSettings
    from connectors.index import Index
    from connectors.memory import MemoryStore

    img, txt = AsifSettings.load().encoders()
    a_paths, a_caps, a_labels, i_paths, i_labels = sample_split(a.images)
    old = [j for j, lab in enumerate(a_labels) if lab not in NEW_DOMAIN]
    new = [j for j, lab in enumerate(a_labels) if lab in NEW_DOMAIN]
    idx = Index.create(MemoryStore("demo"), img, txt, k=12)
    idx.add_anchors([a_paths[j] for j in old], [a_caps[j] for j in old])
    idx.add_items(i_paths, "image", [{"label": lab} for lab in i_labels])
    before = {lab: rank_of(idx, lab) for lab in sorted(set(i_labels))}
    print(f"{len(idx.anchors)} anchors (none of {', '.join(NEW_DOMAIN)}), {len(i_paths)} items")

    r = idx.add_anchor_embeddings(img.encode([a_paths[j] for j in new]),
                                  txt.encode([a_caps[j] for j in new]),
                                  [__import__("asif_index").AnchorPayload(a_caps[j]) for j in new])
    after = {lab: rank_of(idx, lab) for lab in sorted(set(i_labels))}
    print(f"added {len(r)} anchors live -> version {idx.version}")
    print(f"{'class':>12}  rank before  rank after")
    for lab in sorted(before):
        mark = "  (new domain)" if lab in NEW_DOMAIN else ""
        print(f"{lab:>12}  {before[lab]:>11}  {after[lab]:>10}{mark}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
