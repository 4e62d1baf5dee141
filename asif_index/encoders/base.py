"""The encoder interface: batch in, L2-normalised float32 matrix out."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np

from asif_index.errors import InputError, printable

if TYPE_CHECKING:  # torch loads with the first encoder, not with the interface: maintenance
    import torch  # commands (items delete, anchors remove) open an index without it

Modality = Literal["image", "text"]
QUERY_MEMORY = 1024  # distinct recent queries each encoder keeps in memory (encode_query)
_RECENT_INIT = threading.Lock()


@dataclass
class EncodeResult:
    """Outcome of encoding with ``on_error="skip"``.

    embeddings: float32 [n_ok, dim]; kept: positions (in the input) of those rows;
    errors: one :class:`InputError` per skipped input, naming it.
    """

    embeddings: np.ndarray
    kept: list[int]
    errors: list[InputError] = field(default_factory=list)
    # The same rows on the encoder's GPU (None on the CPU): projection reads them there, so
    # the only copy to the host is ``embeddings`` (stored with each item and cached).
    device_embeddings: torch.Tensor | None = None


class Encoder(ABC):
    """A frozen unimodal encoder.

    Subclasses implement ``_prepare`` (validate/decode one item; raise :class:`InputError`)
    and ``_forward`` (a list of prepared items -> float [n, dim], a tensor on the encoder's
    device or an array). The base class adds batching, normalisation, the on-disk cache,
    skip-and-report, and decoding in ``decode_workers`` threads one batch ahead of the model
    (PIL and tokenizers release the GIL), so the model never waits for the decoder.
    """

    modality: Modality
    name: str
    dim: int
    # the spec (asif_index.encoders.registry) that builds this encoder again; set by the
    # registry, None for an encoder made directly
    spec: str | None = None

    def __init__(self, device: str | None = None, batch_size: int | None = None, cache=None,
                 decode_workers: int | None = None) -> None:
        from asif_index.engine import resolve_device

        self.device = resolve_device(device)
        # Large batches keep a GPU busy; on a CPU larger batches only cost memory.
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 64)
        self.decode_workers = (min(8, os.cpu_count() or 1) if decode_workers is None
                               else max(0, int(decode_workers)))
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
    def encode(self, items: Sequence[Any],
               progress: Callable[[int, int], None] | None = None,
               use_cache: bool = True) -> np.ndarray:
        """Encode all items or raise the first :class:`InputError`. Returns float32 [n, dim].
        progress, use_cache: as in :meth:`encode_safe`."""
        return self.encode_safe(items, on_error="raise", progress=progress,
                                use_cache=use_cache).embeddings

    def encode_query(self, item: Any) -> np.ndarray:
        """One search query (a text, an image) -> float32 [1, dim], remembered in memory for
        the last :data:`QUERY_MEMORY` distinct queries (a repeated query, a next page) and
        never written to the on-disk cache: a query seldom comes back, and writing each one
        would grow the cache file and put a SQLite commit on every search's path."""
        key = self._key(item)
        if not hasattr(self, "_recent"):  # made on first use: subclasses need not call up
            with _RECENT_INIT:
                if not hasattr(self, "_recent"):
                    self._recent_lock = threading.Lock()
                    self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        if key is not None:
            with self._recent_lock:
                hit = self._recent.get(key)
                if hit is not None:
                    self._recent.move_to_end(key)
                    return hit.copy()
        emb = self.encode([item], use_cache=False)
        if key is not None:
            with self._recent_lock:
                self._recent[key] = emb.copy()
                while len(self._recent) > QUERY_MEMORY:
                    self._recent.popitem(last=False)
        return emb

    def encode_safe(
        self, items: Sequence[Any], on_error: Literal["raise", "skip"] = "skip",
        progress: Callable[[int, int], None] | None = None, use_cache: bool = True,
    ) -> EncodeResult:
        """Encode items; with ``on_error="skip"`` bad items are left out and reported.
        progress: called with (items done, items) after every model batch, so a caller can
        show a long call move (anchor chunks hold thousands of images). use_cache: read and
        write the on-disk cache (if the encoder has one)."""
        import torch

        cache = self.cache if use_cache else None
        items = list(items)
        out = np.zeros((len(items), self.dim), np.float32)
        done = np.zeros(len(items), bool)
        keys = [self._key(it) for it in items]
        if cache is not None:
            hits = cache.get_many(self.name, [k for k in keys if k is not None])
            for i, k in enumerate(keys):
                if k is not None and k in hits:
                    out[i] = hits[k]
                    done[i] = True
        errors: list[InputError] = []
        err_of: dict[int, InputError] = {}
        bad = np.zeros(len(items), bool)
        t_prep = t_fwd = 0.0
        on_gpu = self.device.type == "cuda"
        dev_out = torch.from_numpy(out).to(self.device) if on_gpu else None
        # The same content twice in one call (an image with five captions) is encoded once.
        first: dict[str, int] = {}
        copies: list[tuple[int, int]] = []
        todo = []
        for i in range(len(items)):
            if done[i]:
                continue
            if keys[i] is not None and keys[i] in first:
                copies.append((i, first[keys[i]]))
                continue
            if keys[i] is not None:
                first[keys[i]] = i
            todo.append(i)
        batches = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        n_cached = int(done.sum())  # ready now; a copy is ready when its original is

        def report(n_done: int) -> None:
            if progress is not None and items:
                rest = len(items) - n_cached
                progress(n_cached + rest * n_done // max(len(todo), 1), len(items))

        def prepare(i: int):
            try:
                return self._prepare(items[i], _label(items[i], i))
            except Exception as exc:  # one bad input never fails the batch
                if not isinstance(exc, InputError):
                    exc = InputError(f"{self.modality} input {_label(items[i], i)} cannot be "
                                     f"prepared ({type(exc).__name__}: {str(exc)[:200]})",
                                     _label(items[i], i))
                return exc

        # threads only pay off with several items to decode (a single query decodes inline)
        pool = (ThreadPoolExecutor(self.decode_workers) if self.decode_workers > 1 and len(todo) > 1
                else None)
        submit = (lambda b: [pool.submit(prepare, i) for i in b]) if pool else (lambda b: b)
        try:
            ahead = submit(batches[0]) if batches else None
            for n, batch in enumerate(batches):
                report(sum(len(b) for b in batches[:n]))
                t0 = time.perf_counter()
                results = [f.result() for f in ahead] if pool else [prepare(i) for i in batch]
                if n + 1 < len(batches):  # decode the next batch while this one runs
                    ahead = submit(batches[n + 1])
                idx, prepared = [], []
                for i, r in zip(batch, results):
                    if isinstance(r, InputError):
                        if on_error == "raise":
                            raise r
                        errors.append(r)
                        err_of[i] = r
                        bad[i] = True
                    else:
                        prepared.append(r)
                        idx.append(i)
                t1 = time.perf_counter()
                t_prep += t1 - t0
                if not idx:
                    continue
                raw = self._forward(prepared)
                emb_t = (raw if isinstance(raw, torch.Tensor) else torch.from_numpy(np.asarray(raw)))
                emb_t = emb_t.float()
                emb_t = emb_t / emb_t.norm(dim=1, keepdim=True).clamp(min=1e-12)
                emb = emb_t.cpu().numpy()
                t_fwd += time.perf_counter() - t1
                out[idx] = emb
                if dev_out is not None:
                    dev_out[torch.tensor(idx, device=self.device)] = emb_t.to(self.device)
                if cache is not None:
                    cache.put_many(
                        self.name, [(keys[i], emb[j]) for j, i in enumerate(idx) if keys[i]]
                    )
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        report(len(todo))
        for i, j in copies:
            if bad[j]:
                bad[i] = True
                err = err_of[j]
                errors.append(type(err)(str(err).replace(_label(items[j], j), _label(items[i], i)),
                                        _label(items[i], i)))
            else:
                out[i] = out[j]
                if dev_out is not None:
                    dev_out[i] = dev_out[j]
        kept = [i for i in range(len(items)) if not bad[i]]
        self.timings["decode_s"] += t_prep
        self.timings["encode_s"] += t_fwd
        dev = dev_out[torch.tensor(kept, dtype=torch.long, device=self.device)] if on_gpu else None
        return EncodeResult(out[kept], kept, errors, dev)

    def _key(self, item: Any) -> str | None:
        try:
            return self.content_key(item)
        except (OSError, InputError):
            return None


def _label(item: Any, i: int) -> str:
    """How an error names an input: its path or short text, else its position."""
    if isinstance(item, PathLike):
        return printable(str(item))
    if isinstance(item, str) and len(item) < 300:
        return printable(item)
    return f"item #{i}"



def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
