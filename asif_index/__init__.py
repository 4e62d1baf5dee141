"""asif-index: training-free multimodal search (ASIF relative vectors) on vector databases.

Core, database-free: encoders, the anchor set, the exact top-k engine and relative
projection, in-memory search / zero-shot classification, and evaluation.

Names are imported on first use (PEP 562), so ``import asif_index.errors`` or reading an
anchor manifest does not pay for torch: the command line's read-only commands stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "AnchorManifest": "asif_index.anchors",
    "AnchorPayload": "asif_index.anchors",
    "AnchorSet": "asif_index.anchors",
    "AsifError": "asif_index.errors",
    "ExactIndex": "asif_index.search",
    "SparseBatch": "asif_index.sparse",
    "TopKEngine": "asif_index.engine",
    "project": "asif_index.projection",
    "rank": "asif_index.search",
    "relative_weights": "asif_index.projection",
    "zero_shot_classify": "asif_index.search",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asif_index' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # pragma: no cover
    from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
    from asif_index.engine import TopKEngine
    from asif_index.errors import AsifError
    from asif_index.projection import project, relative_weights
    from asif_index.search import ExactIndex, rank, zero_shot_classify
    from asif_index.sparse import SparseBatch
