"""Shared by the examples: the bundled sample split honestly (anchors never searched for)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def sample_split(folder: Path):
    """Write the 42 bundled sample images to ``folder`` and split them: in every class of
    three photos, the first two are anchor pairs and the third is an item to find.
    -> (anchor paths, anchor captions, anchor labels, item paths, item labels)."""
    from asif_index.sample_data import sample_pairs

    arrays, captions, labels = sample_pairs()
    folder.mkdir(parents=True, exist_ok=True)
    a_paths, a_caps, a_labels, i_paths, i_labels = [], [], [], [], []
    for i, (arr, cap, lab) in enumerate(zip(arrays, captions, labels)):
        p = folder / f"{i:02d}-{lab}.png"
        Image.fromarray(arr).resize((224, 224)).save(p)
        if i % 3 < 2:
            a_paths.append(p), a_caps.append(cap), a_labels.append(lab)
        else:
            i_paths.append(p), i_labels.append(lab)
    return a_paths, a_caps, a_labels, i_paths, i_labels
