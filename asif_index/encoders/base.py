"""The encoder interface: batch in, L2-normalised float32 matrix out."""

from __future__ import annotations

import hashlib
import time
from os import PathLike
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from asif_index.errors import InputError
from asif_index.engine import resolve_device

Modality = Literal["image", "text"]


@dataclass
class EncodeResult:
    """Outcome of encoding with ``on_error="skip"``.

    embeddings: float32 [n_ok, dim]; kept: positions (in the input) of those rows;
    errors: one :class:`InputError` per skipped input, naming it.
    """

    embeddings: np.ndarray
    kept: list[int]
    errors: list[InputError] = field(default_factory=list)


class Encoder(ABC):
    """A frozen unimodal encoder.

    Subclasses implement ``_prepare`` (validate/decode one item; raise :class:`InputError`)
    and ``_forward`` (a list of prepared items -> float32 [n, dim]). The base class adds
    batching, normalisation, the on-disk cache and skip-and-report.
    """

    modality: Modality
    name: str
    dim: int

    def __init__(self, device: str | None = None, batch_size: int = 64, cache=None) -> None:
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.cache = cache
        # Cumulative seconds spent decoding/validating inputs and running the model.
        self.timings = {"decode_s": 0.0, "encode_s": 0.0}

    # -- to implement -------------------------------------------------------------
    @abstractmethod
    def _prepare(self, item: Any, label: str) -> Any: ...

    @abstractmethod
    def _forward(self, prepared: list[Any]) -> np.ndarray: ...

    def content_key(self, item: Any) -> str | None:
        """Content hash of an item for the cache, or None when it cannot be hashed."""
        return None

    # -- public ---------------------------------------------------------------------
    def encode(self, items: Sequence[Any]) -> np.ndarray:
        """Encode all items or raise the first :class:`InputError`. Returns float32 [n, dim]."""
        return self.encode_safe(items, on_error="raise").embeddings

    def encode_safe(
        self, items: Sequence[Any], on_error: Literal["raise", "skip"] = "skip"
    ) -> EncodeResult:
        """Encode items; with ``on_error="skip"`` bad items are left out and reported."""
        items = list(items)
        out = np.zeros((len(items), self.dim), np.float32)
        done = np.zeros(len(items), bool)
        keys = [self._key(it) for it in items]
        if self.cache is not None:
            hits = self.cache.get_many(self.name, [k for k in keys if k is not None])
            for i, k in enumerate(keys):
                if k is not None and k in hits:
                    out[i] = hits[k]
                    done[i] = True
        errors: list[InputError] = []
        bad = np.zeros(len(items), bool)
        t_prep = t_fwd = 0.0
        todo = [i for i in range(len(items)) if not done[i]]
        for s in range(0, len(todo), self.batch_size):
            idx, prepared = [], []
            t0 = time.perf_counter()
            for i in todo[s : s + self.batch_size]:
                try:
                    prepared.append(self._prepare(items[i], _label(items[i], i)))
                    idx.append(i)
                except Exception as exc:  # one bad input never fails the batch
                    if not isinstance(exc, InputError):
                        exc = InputError(f"{self.modality} input {_label(items[i], i)} cannot be "
                                         f"prepared ({type(exc).__name__}: {str(exc)[:200]})",
                                         _label(items[i], i))
                    if on_error == "raise":
                        raise exc
                    errors.append(exc)
                    bad[i] = True
            t1 = time.perf_counter()
            t_prep += t1 - t0
            if not idx:
                continue
            emb = self._forward(prepared).astype(np.float32)
            t_fwd += time.perf_counter() - t1
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb / np.maximum(norms, 1e-12)
            out[idx] = emb
            if self.cache is not None:
                self.cache.put_many(
                    self.name, [(keys[i], emb[j]) for j, i in enumerate(idx) if keys[i]]
                )
        kept = [i for i in range(len(items)) if not bad[i]]
        self.timings["decode_s"] += t_prep
        self.timings["encode_s"] += t_fwd
        return EncodeResult(out[kept], kept, errors)

    def _key(self, item: Any) -> str | None:
        try:
            return self.content_key(item)
        except (OSError, InputError):
            return None


def _label(item: Any, i: int) -> str:
    """How an error names an input: its path or short text, else its position."""
    if isinstance(item, PathLike):
        return str(item)
    if isinstance(item, str) and len(item) < 300:
        return item
    return f"item #{i}"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
