"""asif-index: training-free multimodal search (ASIF relative vectors) on vector databases.

Core, database-free: encoders, the anchor set, the exact top-k engine and relative
projection, in-memory search / zero-shot classification, and evaluation.
"""

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.errors import AsifError
from asif_index.projection import project, relative_weights
from asif_index.search import ExactIndex, rank, zero_shot_classify
from asif_index.sparse import SparseBatch
from asif_index.engine import TopKEngine

__version__ = "0.1.0"

__all__ = [
    "AnchorManifest",
    "AnchorPayload",
    "AnchorSet",
    "AsifError",
    "ExactIndex",
    "SparseBatch",
    "TopKEngine",
    "project",
    "rank",
    "relative_weights",
    "zero_shot_classify",
]
