"""The one small protocol every vector database implements, and the records it stores.

An index named ``NAME`` is three collections: ``NAME_meta`` (manifest and alias records),
``NAME_anchors`` (anchor pairs: image and text embeddings as two dense vectors + payload) and
``NAME_items`` (relative vector as a native sparse vector, raw embedding as a dense vector,
k-th similarity, modality, anchor-set version, user payload).
"""

from __future__ import annotations

import hashlib
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from asif_index.anchors import AnchorManifest
from asif_index.errors import BackendError, BackendUnavailableError

T = TypeVar("T")


def item_id(modality: str, content_key: str) -> str:
    """Deterministic UUID string of an item from its content hash (re-ingest = update)."""
    return str(uuid.UUID(hashlib.sha1(f"{modality}:{content_key}".encode()).hexdigest()[:32]))


@dataclass
class ItemRecord:
    """One stored item.

    sparse_indices/sparse_values: the non-zero entries of its relative vector (anchor ids);
    embedding: float32 [d] raw unimodal embedding; kth_similarity: its top-k threshold.
    """

    id: str
    modality: str
    sparse_indices: np.ndarray
    sparse_values: np.ndarray
    embedding: np.ndarray
    kth_similarity: float
    anchor_version: int
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnchorRecord:
    id: int
    image: np.ndarray
    text: np.ndarray
    caption: str
    image_ref: str
    source: str
    added_at: float
    key: str = ""


@dataclass
class Hit:
    id: str
    score: float
    modality: str
    payload: dict[str, Any]


Filter = dict[str, Any]  # field -> required value (equality), ANDed


class VectorStore(ABC):
    """What asif-index needs from a vector database."""

    backend: str

    # collections ------------------------------------------------------------------
    @abstractmethod
    def create(self, manifest: AnchorManifest, recreate: bool = False) -> None:
        """Create the index's collections for these encoders/dims."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def drop(self) -> None: ...

    @abstractmethod
    def read_manifest(self) -> AnchorManifest | None: ...

    @abstractmethod
    def write_manifest(self, manifest: AnchorManifest) -> None: ...

    # anchors -------------------------------------------------------------------------
    @abstractmethod
    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None: ...

    @abstractmethod
    def delete_anchors(self, ids: list[int]) -> None: ...

    @abstractmethod
    def fetch_anchors(self) -> list[AnchorRecord]: ...

    # items ---------------------------------------------------------------------------
    @abstractmethod
    def upsert_items(self, items: list[ItemRecord]) -> None: ...

    @abstractmethod
    def fetch_items(self, ids: list[str]) -> list[ItemRecord]: ...

    @abstractmethod
    def existing_ids(self, ids: list[str]) -> set[str]: ...

    @abstractmethod
    def delete_items(self, ids: list[str]) -> None: ...

    @abstractmethod
    def count_items(self, flt: Filter | None = None) -> int: ...

    @abstractmethod
    def search(
        self, indices: np.ndarray, values: np.ndarray, limit: int, flt: Filter | None = None
    ) -> list[Hit]:
        """Items by descending dot product of relative vectors (sparse inner product)."""

    @abstractmethod
    def scroll_items(self, batch: int = 256) -> Iterator[list[ItemRecord]]: ...

    def close(self) -> None:  # noqa: B027 - optional
        pass


def with_retries(
    fn: Callable[..., T],
    is_transient: Callable[[BaseException], bool],
    what: str,
    backend_errors: tuple[type[BaseException], ...] = (),
    attempts: int = 5,
) -> Callable[..., T]:
    """Retry transient backend errors with exponential backoff, then raise
    :class:`BackendUnavailableError` naming the operation and the fix; map other backend
    errors (``backend_errors``) to :class:`BackendError` at this boundary."""
    wrapped = retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )(fn)

    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return wrapped(*args, **kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise BackendUnavailableError(
                    f"{what} failed after {attempts} attempts ({type(exc).__name__}: "
                    f"{str(exc)[:300]}); check that the server is running and reachable, then "
                    "re-run: ingestion resumes from its checkpoint"
                ) from exc
            if backend_errors and isinstance(exc, backend_errors):
                raise BackendError(f"{what} failed: {str(exc)[:500]}") from exc
            raise

    return call


def filter_matches(payload: dict[str, Any], modality: str, flt: Filter | None) -> bool:
    if not flt:
        return True
    for k, v in flt.items():
        have = modality if k == "modality" else payload.get(k)
        if have != v:
            return False
    return True
