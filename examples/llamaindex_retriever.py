"""asif-index as a LlamaIndex retriever: the bundled sample indexed on Qdrant's embedded
engine, then retrieved through LlamaIndex by text, by photo and with a metadata filter.

    pip install 'asif-index[qdrant,llamaindex]'
    python examples/llamaindex_retriever.py --path /tmp/asif-llama
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(path: Path, images: Path):
    """The sample split (anchors never searched for) in a Qdrant Edge index."""
    from asif_index.config import AsifSettings
    from connectors import Index, open_store
    from examples._sample import sample_split

    settings = AsifSettings.load(backend="qdrant", path=path, collection="frameworks")
    a_paths, a_caps, _, i_paths, i_labels = sample_split(images)
    idx = Index.create(open_store(settings), *settings.encoders(), k=20, recreate=True)
    idx.add_anchors(a_paths, a_caps, [str(p) for p in a_paths], source="sample")
    idx.add_items(i_paths, "image", [{"path": str(p.resolve()), "label": lab,
                                      "shelf": i % 3} for i, (p, lab) in
                                     enumerate(zip(i_paths, i_labels))])
    return idx, i_paths


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--path", type=Path, default=Path("asif-llama-db"))
    ap.add_argument("--images", type=Path, default=Path("asif-demo-images"))
    a = ap.parse_args(argv)

    from llama_index.core.schema import QueryBundle
    from llama_index.core.vector_stores.types import (
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
    )

    from connectors.integrations.llamaindex import AsifRetriever

    idx, photos = build(a.path, a.images)
    query = "a photo of a cat"
    nodes = AsifRetriever(idx, similarity_top_k=5, modality="image").retrieve(query)
    for n in nodes:
        print(f"{n.score:.4f}  {Path(n.node.image_path).name}  label={n.node.metadata['label']}")
    shelf = MetadataFilters(filters=[MetadataFilter(key="shelf", value=1,
                                                    operator=FilterOperator.GTE)])
    filtered = AsifRetriever(idx, similarity_top_k=5, filters=shelf).retrieve(query)
    by_photo = AsifRetriever(idx, similarity_top_k=3, modality="image").retrieve(
        QueryBundle("", image_path=str(photos[0])))
    print(f"like {photos[0].name}: {[Path(n.node.image_path).name for n in by_photo]}")
    return {"ids": [n.node.id_ for n in nodes],
            "search_ids": [h.id for h in idx.search(text=query, limit=5,
                                                    filter={"modality": "image"})],
            "scores": [n.score for n in nodes],
            "filtered": [n.node.metadata for n in filtered],
            "by_photo": [n.node.id_ for n in by_photo],
            "by_photo_search": [h.id for h in idx.search(image=photos[0], limit=3,
                                                         filter={"modality": "image"})]}


if __name__ == "__main__":
    main()
