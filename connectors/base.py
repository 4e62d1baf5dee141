"""The one small protocol every vector database implements, and the records it stores.

An index named ``NAME`` is three collections: ``NAME_meta`` (manifest and alias records),
``NAME_anchors`` (anchor pairs: image and text embeddings as two dense vectors + payload) and
``NAME_items`` (relative vector as a native sparse vector, raw embedding as a dense vector,
k-th similarity, modality, anchor-set version, user payload).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from asif_index.anchors import AnchorManifest
from asif_index.errors import (
    BackendError,
    BackendUnavailableError,
    CollectionError,
    ConfigError,
    StorageError,
)

T = TypeVar("T")


FOREVER = 2**62  # valid_to of a point that no anchor update has superseded

# Index names become folder names (Qdrant Edge), collection names and file-name parts: one
# safe set on every backend, so no name can reach outside its database ('../x') or mean
# something to an engine. Milvus collection names also refuse '-' and a leading digit.
_INDEX_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
_MILVUS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def check_index_name(name: object, backend: str = "") -> str:
    """The name, or ConfigError naming it and the fix."""
    ok = isinstance(name, str) and (_MILVUS_NAME if backend == "milvus" else _INDEX_NAME
                                    ).fullmatch(name)
    if not ok:
        shown = ascii(name)[:60]
        suggestion = re.sub(r"[^A-Za-z0-9_]", "_", str(name))[:100].strip("_") or "asif"
        if backend == "milvus" and suggestion[0].isdigit():
            suggestion = "i_" + suggestion
        rule = ("letters, digits and '_', starting with a letter or '_'" if backend == "milvus"
                else "letters, digits, '_' and '-'")
        raise ConfigError(f"index name {shown} (--name) may hold only {rule}, at most 100 "
                          f"characters; choose another, e.g. '{suggestion}'")
    return name


IdRange = tuple[str | None, str | None]


def id_ranges(n: int) -> list[IdRange]:
    """``n`` disjoint ranges covering every point id. Ids are UUIDs from SHA-1 (uniform), so
    the ranges hold about the same number of points; a canonical UUID's text orders as its
    128-bit value, which is the order both Qdrant engines scroll in."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    cuts = [str(uuid.UUID(int=(i << 128) // n)) for i in range(1, n)]
    return list(zip([None, *cuts], [*cuts, None]))


def in_range(point: str, id_range: IdRange | None) -> bool:
    if id_range is None:
        return True
    lo, hi = id_range
    return (lo is None or point >= lo) and (hi is None or point < hi)


def item_id(modality: str, content_key: str) -> str:
    """Deterministic logical id of an item from its content hash (re-ingest = update)."""
    return str(uuid.UUID(hashlib.sha1(f"{modality}:{content_key}".encode()).hexdigest()[:32]))


def point_id(item: str, valid_from: int) -> str:
    """Deterministic id of the point holding ``item``'s vector from anchor version
    ``valid_from`` on: each anchor update writes new points, never overwrites visible ones."""
    return str(uuid.UUID(hashlib.sha1(f"{item}@{valid_from}".encode()).hexdigest()[:32]))


@dataclass
class ItemRecord:
    """One stored point: an item's vector valid for anchor versions [valid_from, valid_to).

    id: point id; item: logical item id (content hash); sparse_indices/sparse_values: the
    non-zero entries of its relative vector (anchor ids); embedding: float32 [d] raw
    unimodal embedding; kth_similarity: raw similarity of its k-th anchor (a new anchor
    changes the vector only if it beats this).
    """

    id: str
    item: str
    modality: str
    sparse_indices: np.ndarray
    sparse_values: np.ndarray
    embedding: np.ndarray
    kth_similarity: float
    valid_from: int
    valid_to: int = FOREVER
    payload: dict[str, Any] = field(default_factory=dict)
    # folded QB-Norm value c - T log Z (asif_index.methods.qbnorm_fold), stored as the
    # sparse entry at FOLD_DIM; None: the index does not fold
    fold: float | None = None

    def visible(self, version: int | None) -> bool:
        return version is None or self.valid_from <= version < self.valid_to


def point_records(sb, items: list[str], modality: str, embeddings, payloads,
                  version: int) -> list[ItemRecord]:
    """Points valid from ``version``: row r of the projection ``sb`` (a SparseBatch) becomes
    item ``items[r]`` with its raw embedding and payload; indices stored ascending."""
    out = []
    for r, item in enumerate(items):
        idx, val = sb.row(r)
        order = np.argsort(idx)
        out.append(ItemRecord(point_id(item, version), item, modality, idx[order], val[order],
                              np.asarray(embeddings[r], np.float32),
                              float(sb.kth_similarity[r]), version, FOREVER, dict(payloads[r])))
    return out


# Two-stage search (connectors.search_stages): each item also stores its ``item_keep``
# largest entries as a second sparse vector, ``cand``, which a cheap first stage searches
# with the query's largest entries; the full vector ``rel`` then rescores the candidates.
TWO_STAGE_KEY = "two_stage"  # manifest.extra: {"item_keep": n}; absent: single stage only
# 0: no candidate vectors by default. Measured (docs/benchmarks.md, 7b; Qdrant Edge, 10^5
# tuned image items): one exact stage with the fold answered in 12 ms, while two stages cost
# 28 ms at 30 candidates and 140 ms at 1,000 (Qdrant's rescoring costs ~80 us per candidate
# for an 800-entry query); two stages are an option for engines where they pay.
DEFAULT_ITEM_KEEP = 0


RAW_DTYPE_KEY = "raw_dtype"  # manifest.extra: "float16" where raw embeddings are half size
RAW_DTYPES = ("float32", "float16")


def candidate_entries(indices: np.ndarray, values: np.ndarray, keep: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` largest entries of a sparse vector (ties: lower anchor id), ascending id."""
    indices, values = np.asarray(indices), np.asarray(values)
    if len(values) > keep:
        top = np.lexsort((indices, -values))[:keep]
        indices, values = indices[top], values[top]
    order = np.argsort(indices, kind="stable")
    return indices[order], values[order]


def two_stage_keep(manifest: AnchorManifest | None) -> int | None:
    """The entries per item of the index's candidate vector (None: it has none)."""
    doc = (manifest.extra.get(TWO_STAGE_KEY) if manifest is not None else None) or {}
    keep = doc.get("item_keep")
    return int(keep) if keep else None


# Longest anchor fields any backend stores (Milvus VARCHAR limits, in UTF-8 bytes): checked
# before an update writes anything, so no server refuses a row half-way through one.
ANCHOR_FIELD_LIMITS = {"caption": 4096, "image_ref": 2048, "source": 256, "key": 64}
MAX_PAYLOAD_BYTES = 60_000  # an item's JSON payload (Milvus JSON fields take 64 KiB)


def anchor_payload_problem(payload: Any) -> str | None:
    """Why an anchor payload cannot be stored (a field over its limit), or None."""
    for name, limit in ANCHOR_FIELD_LIMITS.items():
        n = len(str(getattr(payload, name, "")).encode("utf-8"))
        if n > limit:
            return (f"anchor {name} is {n} bytes long, over the {limit}-byte limit; shorten it "
                    "(or keep long text in your own store and reference it)")
    return None


def item_payload_problem(payload: dict) -> str | None:
    import json

    reserved = [k for k in payload if str(k).startswith("asif_")]
    if reserved:  # the stores' own fields (validity, type tags) live under this prefix
        return (f"payload field '{reserved[0]}' starts with 'asif_', which is reserved for the "
                "index's own fields; rename it")

    try:
        n = len(json.dumps(payload).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        return f"payload is not JSON-serialisable ({exc})"
    if n > MAX_PAYLOAD_BYTES:
        return f"payload is {n} bytes as JSON, over the {MAX_PAYLOAD_BYTES}-byte limit"
    return None


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
    added_version: int = 0
    removed_version: int = FOREVER

    def visible(self, version: int | None) -> bool:
        return version is None or self.added_version <= version < self.removed_version


@dataclass
class Hit:
    id: str  # logical item id
    score: float
    modality: str
    payload: dict[str, Any]
    # the relative vectors' dot product, when ``score`` is another ranking's (a re-ranked
    # hit's normalised score); None: the score is that similarity
    similarity: float | None = None
    # the stored fold value of a folded item (stores fill it; Index turns it into scores)
    fold: float | None = None


# A user filter: a parsed tree (connectors.filters) or any form filters.parse reads
# ({"field": value} equality, operator objects, and/or/not). Stores parse it at their entry.
Filter = Any


class VectorStore(ABC):
    """What asif-index needs from a vector database."""

    backend: str
    name: str

    @property
    def location(self) -> str:
        """How messages name this index: backend, name and where it lives."""
        where = getattr(self, "where", None)
        return f"{self.backend} index '{self.name}'" + (f" at {where}" if where else "")

    @property
    def items(self) -> str:
        return f"{self.name}_items"

    @property
    def anchors(self) -> str:
        return f"{self.name}_anchors"

    @property
    def meta(self) -> str:
        return f"{self.name}_meta"

    # collections ------------------------------------------------------------------
    @abstractmethod
    def create(self, manifest: AnchorManifest, recreate: bool = False) -> None:
        """Create the index's collections for these encoders/dims."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def drop(self) -> None: ...

    storage_version = 1  # bumped by a store whose on-disk layout changes

    def read_manifest(self) -> AnchorManifest | None:
        doc = self.get_doc("manifest") if self.exists() else None
        if not doc:
            return None
        try:
            man = AnchorManifest(**doc)
        except TypeError as exc:
            raise CollectionError(f"{self.location} has a manifest this version of asif-index "
                                  f"cannot read ({exc}); open it with the version that made "
                                  "it, or re-ingest into a new index") from exc
        have = int(man.extra.get("storage", 1))
        if have != self.storage_version:
            raise CollectionError(
                f"{self.location} was written by another version of asif-index (storage "
                f"format {have}; this version reads {self.storage_version}); open it with that "
                "version, or create a new index (asif-index init --name ...) and re-ingest")
        return man

    def write_manifest(self, manifest: AnchorManifest) -> None:
        manifest.extra.setdefault("storage", self.storage_version)
        self.put_doc("manifest", asdict(manifest))

    @abstractmethod
    def get_doc(self, key: str) -> dict | None:
        """A JSON document of the meta collection (manifest, update journal, aliases)."""

    @abstractmethod
    def put_doc(self, key: str, doc: dict | None) -> None:
        """Write (or with None delete) one meta document: a single-row, atomic write."""

    def collection_names(self) -> list[str]:
        """Every collection of this database (all indexes, not only this one)."""
        raise NotImplementedError(f"{self.backend} cannot list its collections")

    @abstractmethod
    def list_docs(self, kind: str) -> dict[str, dict]:
        """Every meta document whose key is ``kind:...`` (leases), by key."""

    # anchors -------------------------------------------------------------------------
    @abstractmethod
    def upsert_anchors(self, anchors: list[AnchorRecord]) -> None: ...

    @abstractmethod
    def delete_anchors(self, ids: list[int]) -> None: ...

    @abstractmethod
    def fetch_anchors(self, version: int | None = None) -> list[AnchorRecord]:
        """Anchors visible at ``version`` (all when None), by id."""

    # items ---------------------------------------------------------------------------
    @abstractmethod
    def upsert_items(self, items: list[ItemRecord]) -> None: ...

    @abstractmethod
    def fetch_items(self, ids: list[str]) -> list[ItemRecord]:
        """Points by point id."""

    @abstractmethod
    def heads(self, items: list[str]) -> dict[str, ItemRecord]:
        """The current point (valid_to == FOREVER) of each logical item id that has one."""

    def points_at(self, items: list[str], version: int) -> dict[str, ItemRecord]:
        """The point of each logical item that is visible at ``version``, in one read. While
        an update runs, an item's head is the new version's point, so readers pinned at the
        old one need this instead of :meth:`heads`. Stores override this fallback (heads,
        then a scan for the rest) with one filtered query."""
        out = {k: r for k, r in self.heads(items).items() if r.visible(version)}
        rest = set(items) - set(out)
        if rest:
            for batch in self.scroll_items(version=version):
                out.update({r.item: r for r in batch if r.item in rest})
        return out

    @abstractmethod
    def set_valid_to(self, point_ids: list[str], version: int) -> None:
        """Close the validity of points at ``version`` (they stay visible below it)."""

    @abstractmethod
    def delete_items(self, ids: list[str]) -> None: ...

    @abstractmethod
    def delete_expired(self, version: int, anchor_version: int | None = None) -> int:
        """Garbage-collect points invisible at ``version`` and later, and anchors invisible
        at ``anchor_version`` (default ``version``) and later: a folded QB-Norm bank keeps
        the anchors of its version."""

    @abstractmethod
    def count_items(self, flt: Filter | None = None, version: int | None = None) -> int: ...

    @abstractmethod
    def search(
        self, indices: np.ndarray, values: np.ndarray, limit: int, flt: Filter | None = None,
        version: int | None = None,
    ) -> list[Hit]:
        """Points visible at ``version`` by descending sparse dot product."""

    @abstractmethod
    def scroll_items(self, batch: int = 256, version: int | None = None,
                     id_range: IdRange | None = None) -> Iterator[list[ItemRecord]]:
        """Points visible at ``version`` (all when None), in batches; with ``id_range``
        (lo, hi), only points whose id is in [lo, hi) (None: unbounded), so that workers can
        scroll disjoint parts of one collection (see :func:`id_ranges`)."""

    def close(self) -> None:  # noqa: B027 - optional
        pass

    # bounded anchor updates (connectors.updates): which points an anchor change can touch
    def points_near(self, modality: str, queries: np.ndarray, threshold: float,
                    kth_range: tuple[float, float], version: int) -> set[str]:
        """Ids of the points of ``modality`` visible at ``version`` whose k-th similarity lies
        in [lo, hi) and whose stored raw embedding has a dot product above ``threshold``
        with any row of ``queries`` float32 [m, d]: an exact (brute-force) search in the
        database. NotImplementedError where a store has none (the update then scans)."""
        raise NotImplementedError(f"{self.backend} cannot search raw embeddings by threshold")

    def points_holding(self, anchor_ids: list[int], version: int) -> set[str]:
        """Ids of the points visible at ``version`` whose vector holds any of these anchors
        (their posting lists). NotImplementedError where a store cannot list them all."""
        raise NotImplementedError(f"{self.backend} cannot list an anchor's points")

    def kth_sample(self, version: int, n: int = 4096) -> np.ndarray:
        """The k-th similarities of up to ``n`` points visible at ``version``."""
        out: list[float] = []
        for batch in self.scroll_items(min(n, 1024), version=version):
            out += [r.kth_similarity for r in batch]
            if len(out) >= n:
                break
        return np.asarray(out[:n], np.float64)

    _candidate_keep: int | None = None  # read from the manifest once (0: no vectors)

    def candidate_keep(self) -> int | None:
        """Entries of this index's candidate vectors (None: it has none); the manifest's
        setting never changes after create, so it is read once."""
        if self._candidate_keep is None:
            self._candidate_keep = two_stage_keep(self.read_manifest()) or 0
        return self._candidate_keep or None

    def search_two_stage(self, full: tuple[np.ndarray, np.ndarray],
                         cand: tuple[np.ndarray, np.ndarray], candidates: int, limit: int,
                         flt: Filter | None = None, version: int | None = None) -> list[Hit]:
        """The ``candidates`` best points by ``cand`` (query entries against each item's
        candidate vector), rescored by ``full`` against the full stored vectors: the top
        ``limit`` of those exact scores. Only for an index created with a candidate vector
        (:func:`two_stage_keep`); stores without a rescoring stage do it client-side."""
        raise NotImplementedError(f"{self.backend} has no two-stage search")

    # verified writes -------------------------------------------------------------------
    # An engine can acknowledge a write it does not keep (milvus-lite on a full disk logs
    # "database or disk is full" and answers success). So everything that depends on a
    # write (a checkpoint, a retired point, a version switch) runs only after the write has
    # been read back: these wrap the primitives above and raise StorageError on a mismatch.

    def stored_validity(self, point_ids: list[str]) -> dict[str, tuple[int, int]]:
        """(valid_from, valid_to) of each of these points that is stored. Stores override
        it with a read that skips the vectors."""
        return {r.id: (r.valid_from, r.valid_to) for r in self.fetch_items(list(point_ids))}

    def stored_anchor_versions(self, ids: list[int]) -> dict[int, tuple[int, int]]:
        """(added_version, removed_version) of each of these anchors that is stored."""
        want = {int(i) for i in ids}
        return {a.id: (a.added_version, a.removed_version)
                for a in self.fetch_anchors(None) if a.id in want}

    def _lost(self, what: str, n: int, bad: list) -> StorageError:
        return StorageError(
            f"{self.location}: {what}: the database acknowledged {n} writes but {len(bad)} of "
            f"them are not stored as written (e.g. {bad[0]}); a full disk or a server that "
            "dropped the write. Nothing that depends on them was done and the live version is "
            "complete: free disk space (or fix the server), then re-run the same command "
            "(ingestion resumes from its checkpoint, an anchor update from its journal)")

    # Milvus applies an upsert as a delete plus an insert, and a read between the two can
    # miss the row for a moment: a mismatch is read again for up to this long (backing off)
    # before the write counts as lost. A dropped write stays missing.
    READ_BACK_S = 3.0

    def _read_back(self, what: str, n: int, mismatches: Callable[[], list]) -> None:
        delay, waited = 0.02, 0.0
        while True:
            bad = mismatches()
            if not bad:
                return
            if waited >= self.READ_BACK_S:
                raise self._lost(what, n, bad)
            time.sleep(delay)
            waited += delay
            delay = min(2 * delay, 0.5)

    def write_items(self, items: list[ItemRecord], what: str = "writing items") -> None:
        """upsert_items, then read every point's id and validity back."""
        if not items:
            return
        self.upsert_items(items)
        want = {it.id: (int(it.valid_from), int(it.valid_to)) for it in items}

        def bad() -> list:
            have = self.stored_validity(list(want))
            return [i for i, v in want.items() if have.get(i) != v]

        self._read_back(what, len(want), bad)

    def close_items(self, point_ids: list[str], version: int,
                    what: str = "closing superseded points") -> None:
        """set_valid_to, then read the closed validity back."""
        if not point_ids:
            return
        self.set_valid_to(point_ids, version)

        def bad() -> list:
            have = self.stored_validity(list(point_ids))
            return [i for i in point_ids if i not in have or have[i][1] != int(version)]

        self._read_back(what, len(point_ids), bad)

    def write_anchors(self, anchors: list[AnchorRecord], what: str = "writing anchors") -> None:
        if not anchors:
            return
        self.upsert_anchors(anchors)
        want = {int(a.id): (int(a.added_version), int(a.removed_version)) for a in anchors}

        def bad() -> list:
            have = self.stored_anchor_versions(list(want))
            return [i for i, v in want.items() if have.get(i) != v]

        self._read_back(what, len(want), bad)

    def switch_manifest(self, manifest: AnchorManifest) -> None:
        """write_manifest (the atomic version switch), then read it back."""
        self.write_manifest(manifest)

        def bad() -> list:
            doc = self.get_doc("manifest")
            return [] if doc and int(doc.get("version", -1)) == int(manifest.version) \
                else ["manifest"]

        self._read_back(f"switching to anchor version {manifest.version}", 1, bad)


def with_retries(
    fn: Callable[..., T],
    is_transient: Callable[[BaseException], bool],
    what: str,
    backend_errors: tuple[type[BaseException], ...] = (),
    attempts: int = 5,
    budget: float = 60.0,
) -> Callable[..., T]:
    """Retry transient backend errors with exponential backoff for at most ``attempts``
    tries and ``budget`` seconds in all, then raise :class:`BackendUnavailableError` naming
    the operation, the server and the fix; map other backend errors (``backend_errors``) to
    :class:`BackendError` at this boundary. Each try must itself be bounded (the store
    passes its request timeout to the client), so the whole call ends within about
    ``budget`` + one request timeout."""
    wrapped = retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts) | stop_after_delay(budget),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )(fn)

    def call(*args: Any, **kwargs: Any) -> T:
        t0 = time.monotonic()
        try:
            return wrapped(*args, **kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise BackendUnavailableError(
                    f"{what} failed for {time.monotonic() - t0:.1f} s ({type(exc).__name__}: "
                    f"{_first_line(exc)}); check that the server is running and reachable "
                    "(timeouts: ASIF_REQUEST_TIMEOUT, ASIF_RETRY_BUDGET), then re-run: "
                    "ingestion resumes from its checkpoint, an update from its journal"
                ) from exc
            if backend_errors and isinstance(exc, backend_errors):
                raise BackendError(
                    f"{what} failed: {_first_line(exc, 400)}; the server's log says why (a "
                    "full disk shows there): fix that, then re-run the same command "
                    "(ingestion resumes from its checkpoint, an update from its journal)"
                ) from exc
            raise

    return call


def _first_line(exc: BaseException, n: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text[:n]


def filter_matches(payload: dict[str, Any], modality: str, flt: Filter | None) -> bool:
    from connectors import filters

    return filters.matches(filters.parse(flt), payload, modality)
