"""asif-index as a LangChain retriever: the bundled sample indexed on Qdrant's embedded
engine, then retrieved through LangChain by text, by photo and with a filter.

    pip install 'asif-index[qdrant,langchain]'
    python examples/langchain_retriever.py --path /tmp/asif-langchain
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--path", type=Path, default=Path("asif-langchain-db"))
    ap.add_argument("--images", type=Path, default=Path("asif-demo-images"))
    a = ap.parse_args(argv)

    from connectors.integrations.langchain import AsifLangChainRetriever
    from examples.llamaindex_retriever import build

    idx, photos = build(a.path, a.images)
    query = "a photo of a cat"
    docs = AsifLangChainRetriever(index=idx, k=5, modality="image").invoke(query)
    for d in docs:
        print(f"{d.metadata['asif_score']:.4f}  {Path(d.metadata['asif_image_path']).name}  "
              f"label={d.metadata['label']}")
    filtered = AsifLangChainRetriever(index=idx, k=5, filter={"shelf": {"gte": 1}}).invoke(query)
    by_photo = AsifLangChainRetriever(index=idx, k=3, modality="image",
                                      query_kind="image").invoke(str(photos[0]))
    print(f"like {photos[0].name}: {[Path(d.metadata['asif_image_path']).name for d in by_photo]}")
    return {"ids": [d.id for d in docs],
            "search_ids": [h.id for h in idx.search(text=query, limit=5,
                                                    filter={"modality": "image"})],
            "filtered": [d.metadata for d in filtered],
            "by_photo": [d.id for d in by_photo],
            "by_photo_search": [h.id for h in idx.search(image=photos[0], limit=3,
                                                         filter={"modality": "image"})]}


if __name__ == "__main__":
    main()
