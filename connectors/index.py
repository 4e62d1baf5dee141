"""The query adapter: an ASIF index stored in a vector database."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.encoders.base import Encoder
from asif_index.encoders.registry import ENCODER_SPECS_KEY
from asif_index.errors import (
    AnchorError,
    ConfigError,
    InputError,
    ModalityError,
    UpdateInProgressError,
)
from asif_index.methods.unified import DEFAULT_IMAGE_WEIGHT
from asif_index.search import DEFAULT_TEMPLATES, prompts
from asif_index.sparse import SparseBatch
from connectors import timing
from connectors.anchor_cache import cached_anchors_at
from connectors.base import (
    DEFAULT_ITEM_KEEP,
    RAW_DTYPE_KEY,
    RAW_DTYPES,
    TWO_STAGE_KEY,
    Filter,
    Hit,
    ItemRecord,
    VectorStore,
    item_id,
    item_payload_problem,
    point_records,
)
from connectors.updates import MAX_REMOVE_PER_UPDATE, UpdateResult, update_anchors
from connectors.versioning import (
    DEFAULT,
    READER,
    Coordination,
    WriterLease,
    anchors_at,
    drop_lease,
    live_state,
    new_owner,
    pin_reader,
    reproject_mixed,
    wait_for_update,
)


ITEM_COUNT_TTL = 30.0
# manifest.extra: every stored date text has its seconds twin (connectors.filters.DATE_TWIN);
# an index made before twins cannot answer date ranges, and says so
DATE_TWINS_KEY = "date_twins"


@dataclass(frozen=True)
class SearchResult:
    """One search's answer: ``hits`` best first; ``query``: text, image or composed;
    ``anchor_version``: the version query and items were projected at; ``qbnorm``: the
    temperature the hits were normalised at (None: the database's plain ranking)."""

    hits: list[Hit]
    query: str
    anchor_version: int
    qbnorm: float | None


def project_records(anchors: AnchorSet, embeddings: np.ndarray, modality: str,
                    keys: Sequence[str], payloads: Sequence[dict],
                    engine_options: dict | None = None, taggers: dict | None = None,
                    device_embeddings=None) -> tuple[list[ItemRecord], list[InputError]]:
    """Item records of embeddings float32 [n, d] at ``anchors``' version: ids from the
    content ``keys``, payloads checked, rows with an all-zero relative vector (no anchor with
    positive similarity) reported instead of stored. What :meth:`Index.records` does, as a
    function of the anchor set alone, so a worker holding only the anchors can run it."""
    if modality not in ("image", "text"):
        raise ModalityError(f"modality must be 'image' or 'text'; got '{modality}'")
    if anchors.manifest.extra.get(RAW_DTYPE_KEY) == "float16":
        # the stored raw embedding is the float16 one: project exactly what is kept, so
        # that a re-projection from storage (anchor updates) gives the same vector
        embeddings = np.asarray(embeddings, np.float32).astype(np.float16).astype(np.float32)
        device_embeddings = None
    x = device_embeddings if device_embeddings is not None else embeddings
    sb = anchors.project(x, modality, **(engine_options or {}))
    recs = point_records(sb, [item_id(modality, k) for k in keys], modality, embeddings,
                         payloads, anchors.manifest.version)
    if anchors.fold is not None:
        anchors.fold.fold_records([r for r in recs if r.sparse_indices.size])
    for name, head in (taggers or {}).items():
        labels, probs = head.predict(sb, modality)
        for r, lb, pr in zip(recs, labels, probs):
            r.payload = {**r.payload, f"tag_{name}": lb,
                         f"tag_{name}_p": round(float(pr.max()), 4)}
    from connectors.schema import declared, type_problem

    fields = declared(anchors.manifest)
    errors, kept = [], []
    for key, r in zip(keys, recs):
        problem = item_payload_problem(r.payload) or type_problem(r.payload, fields)
        if problem:
            errors.append(InputError(f"{modality} item '{key}': {problem}", key))
        elif r.sparse_indices.size == 0:
            errors.append(InputError(f"{modality} item '{key}' has no anchor with positive "
                                     "similarity; add anchors closer to it", key))
        else:
            kept.append(r)
    return kept, errors


class _NoEncoder:
    """Stands in for the encoders of an index opened with :meth:`Index.open_writer`."""

    def __init__(self, modality: str) -> None:
        self.modality = modality

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy, pickle and hasattr probes
            raise AttributeError(name)
        raise ConfigError(f"this index was opened to write projected records "
                          f"(Index.open_writer) and has no {self.modality} encoder; open it "
                          "with Index.open(store, image_encoder, text_encoder) to embed inputs")


@dataclass
class Explanation:
    """Why an item matches a query. ``similarity``: the relative vectors' dot product s, the
    sum of every shared anchor's contribution (``anchors``: the largest first). ``score``:
    the hit's score as search gives it (:mod:`connectors.search_stages`): s itself for a
    plain ranking, else ``relevance(s/T - log_z)`` at ``temperature`` T, with ``log_z`` the
    item's query-bank normaliser log Z(x)."""

    score: float
    anchors: list[dict[str, Any]]
    similarity: float = 0.0
    temperature: float | None = None
    log_z: float | None = None


class Index:
    """Anchors + items in one :class:`VectorStore`, with the encoders that made them.

    A fresh process needs only the database: :meth:`open` reloads the anchor matrices from
    the anchors collection and checks the encoders against the stored manifest.
    """

    def __init__(self, store: VectorStore, anchors: AnchorSet, image_encoder: Encoder,
                 text_encoder: Encoder, query_keep: int | None = None,
                 timing: Coordination = DEFAULT, **engine_options: Any) -> None:
        """query_keep: send only the largest ``query_keep`` entries of a query's relative
        vector to the database (fewer posting lists; see benchmarks/pruning.py for the
        recall it costs). None sends all k. timing: lease lengths and waits (see
        ``connectors.versioning``)."""
        self.store = store
        self.query_keep = query_keep
        self.anchors = anchors
        self.encoders = {"image": image_encoder, "text": text_encoder}
        self.engine_options = engine_options
        self.timing = timing
        self.cache_dir: str | None = None  # anchor copies (set by open)
        # name -> TextHead: each written item gets payload fields tag_<name>, tag_<name>_p
        self.taggers: dict[str, Any] = {}
        self.owner = new_owner()  # names this process's leases in the database
        self._renew_at = 0.0  # reader lease: renew (and check retirement) after this time
        self._banks: dict[tuple, Any] = {}  # (version, modality, set) -> its QueryBank
        self._bank_lock = threading.Lock()
        self._counted: dict[int, tuple[float, int]] = {}  # version -> (when, visible items)

    @property
    def where(self) -> str:
        return self.store.location

    def close(self) -> None:
        """Release this reader's lease (its pinned version may then be garbage-collected)."""
        try:
            drop_lease(self.store, READER, self.owner)
        except Exception:  # closing a dead connection: the lease expires by itself
            pass
        self._renew_at = 0.0

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _pin(self) -> None:
        """Hold this reader's version against garbage collection; raises
        VersionRetiredError when it is already gone."""
        if time.time() >= self._renew_at:
            self._renew_at = pin_reader(self.store, self.owner, self.version, self.where,
                                        self.timing)

    def _adopt(self, anchors: AnchorSet) -> None:
        """Move to another anchor version (after an update or a refresh), once everything a
        search at it needs is built: searches keep the old version until then, so none of
        them waits for a top-k engine or a query bank (the tuned recipe's bank over 30,000
        anchors takes tens of seconds on two cores)."""
        self.prepare(anchors)
        self.anchors = anchors
        self._renew_at = 0.0

    def prepare(self, anchors: AnchorSet | None = None) -> None:
        """Build the top-k engines and, when the recipe re-ranks, the query banks of
        ``anchors`` (default: the current ones) ahead of the first search."""
        anchors = self.anchors if anchors is None else anchors
        if not len(anchors):
            return
        for mod in ("image", "text"):
            anchors.engine(mod, **self.engine_options)
        if anchors.recipe.qbnorm is not None and anchors.fold is None:
            # a folded index normalises in the database: searches need no bank (writers
            # build the frozen one on their first write)
            for mod in ("image", "text"):
                self._bank(anchors, mod)

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    def create(cls, store: VectorStore, image_encoder: Encoder, text_encoder: Encoder,
               k: int = 800, p: float = 8.0, recreate: bool = False, recipe=None,
               candidate_keep: int | None = DEFAULT_ITEM_KEEP, raw_dtype: str = "float32",
               fields: dict[str, str] | None = None, **engine_options) -> "Index":
        """A new, empty index. recipe: an ``asif_index.recipe.Recipe`` (default
        :data:`asif_index.recipe.DEFAULT`, ``tuned``; ``PUBLISHED`` is the paper's); its
        statistics are frozen from the first anchors added. candidate_keep: entries of each
        item's candidate vector for two-stage search (None or 0: none, every search is one
        exact stage). raw_dtype: how the raw embeddings (read only by anchor updates) are
        stored: "float32", or "float16" (half the bytes; items are projected from the
        rounded embedding, so updates stay exact; Qdrant stores it as float16). fields:
        declared payload fields {name: keyword | integer | float | bool}
        (:mod:`connectors.schema`): indexed on Qdrant, type-checked on every write."""
        import uuid

        from connectors.schema import SCHEMA_KEY, check_fields

        from asif_index.recipe import DEFAULT as DEFAULT_RECIPE

        recipe = DEFAULT_RECIPE if recipe is None else recipe
        man = AnchorManifest(image_encoder.name, text_encoder.name, image_encoder.dim,
                             text_encoder.dim, k=k, p=p, extra={"uid": uuid.uuid4().hex})
        if not recipe.published:
            man.extra["recipe"] = recipe.to_dict()
        specs = {"image": getattr(image_encoder, "spec", None),
                 "text": getattr(text_encoder, "spec", None)}
        if all(specs.values()):  # so that opening it builds these encoders, not the default
            man.extra[ENCODER_SPECS_KEY] = specs
        if raw_dtype not in RAW_DTYPES:
            raise ConfigError(f"raw_dtype (--raw-dtype) must be one of {', '.join(RAW_DTYPES)}; "
                              f"got {raw_dtype!r}")
        if raw_dtype != "float32":
            man.extra[RAW_DTYPE_KEY] = raw_dtype
        if candidate_keep:
            if isinstance(candidate_keep, bool) or not isinstance(candidate_keep, int) \
                    or not 1 <= candidate_keep <= 4096:
                raise ConfigError(f"candidate_keep (--candidate-keep) must be a whole number "
                                  f"from 1 to 4096, or 0 for no candidate vectors; got "
                                  f"{candidate_keep!r}")
            man.extra[TWO_STAGE_KEY] = {"item_keep": int(candidate_keep)}
        man.extra[SCHEMA_KEY] = check_fields(fields)
        man.extra[DATE_TWINS_KEY] = True  # every stored date text has its seconds twin
        store.create(man, recreate=recreate)
        return cls(store, AnchorSet(man), image_encoder, text_encoder, **engine_options)

    @classmethod
    def open(cls, store: VectorStore, image_encoder: Encoder, text_encoder: Encoder,
             cache_dir: str | None = None, **engine_options) -> "Index":
        """Open at the live anchor version; queries stay pinned to it until :meth:`refresh`.
        cache_dir: keep a local copy of the anchor matrices there (``connectors.anchor_cache``)
        so that the next open reads only the manifest from the database."""
        from connectors.readonly import live_manifest

        man = live_manifest(store)
        man.check_encoders(image_encoder.name, text_encoder.name,
                           f"{store.backend} index '{getattr(store, 'name', '?')}'")
        idx = cls(store, cached_anchors_at(store, man, man.version, cache_dir), image_encoder,
                  text_encoder, **engine_options)
        idx.cache_dir = cache_dir
        return idx

    @classmethod
    def open_writer(cls, store: VectorStore, cache_dir: str | None = None,
                    **engine_options) -> "Index":
        """Open at the live anchor version without encoders: an index that writes records
        projected elsewhere (:func:`project_records`, as distributed ingestion's writers do),
        re-projecting them from their raw embeddings if the live version moved. Calls that
        embed an input raise :class:`ConfigError`."""
        from connectors.readonly import live_manifest

        man = live_manifest(store)
        idx = cls(store, cached_anchors_at(store, man, man.version, cache_dir),
                  _NoEncoder("image"), _NoEncoder("text"), **engine_options)
        idx.cache_dir = cache_dir
        return idx

    def refresh(self) -> bool:
        """Move to the live anchor version (after another process updated the anchors);
        -> whether the version changed. Searches in other threads keep the old version until
        the new one is loaded and prepared."""
        man = self.store.read_manifest()
        if man is not None and man.version != self.version:
            self._adopt(cached_anchors_at(self.store, man, man.version, self.cache_dir))
            return True
        return False

    @property
    def version(self) -> int:
        return self.anchors.manifest.version

    @property
    def k(self) -> int:
        return self.anchors.manifest.k

    @property
    def p(self) -> float:
        return self.anchors.manifest.p

    # -- anchors -------------------------------------------------------------------------
    def add_anchor_embeddings(self, image_emb: np.ndarray, text_emb: np.ndarray,
                              payloads: list[AnchorPayload], item_pass=None) -> np.ndarray:
        """Append anchor pairs (already embedded) as a new anchor version; stored items are
        brought to exactly the state a rebuild would give (see ``connectors.updates``).
        item_pass: run the pass over the stored items elsewhere (e.g.
        ``connectors.distributed.updates.RayItemPass``)."""
        return update_anchors(self, add=(image_emb, text_emb, payloads),
                              timing=self.timing, item_pass=item_pass).added_ids

    def resume_update(self, item_pass=None) -> UpdateResult:
        """Finish an interrupted anchor update (its journal says what it was); a no-op
        result at the live version when none is pending."""
        return update_anchors(self, timing=self.timing, item_pass=item_pass)

    def remove_anchors(self, ids, progress=None, item_pass=None) -> UpdateResult:
        """Remove anchors by id (one update per 4,096 ids); stored items stay exact.
        ``progress(items scanned)`` is called during each update's item pass (when it runs
        here, not in an ``item_pass``)."""
        ids = np.unique(np.asarray(ids, np.int64))
        if not len(ids):
            raise AnchorError("no anchor ids to remove")
        self.anchors.rows_of(ids)  # all known, or AnchorError before anything changes
        res = None
        for s in range(0, len(ids), MAX_REMOVE_PER_UPDATE):
            r = update_anchors(self, remove=ids[s:s + MAX_REMOVE_PER_UPDATE], timing=self.timing,
                               progress=progress, item_pass=item_pass)
            if res is None:
                res = r
            else:
                res.version, res.items_scanned = r.version, res.items_scanned + r.items_scanned
                res.items_touched += r.items_touched
                res.seconds += r.seconds
        res.removed_ids = ids
        return res

    def add_anchors(self, images: Sequence[Any], captions: Sequence[str],
                    refs: Sequence[str] | None = None, source: str = "") -> tuple[np.ndarray, list[InputError]]:
        """Embed and append pairs; pairs with a bad image or caption are skipped and returned."""
        if len(images) != len(captions):
            raise AnchorError(f"{len(images)} images but {len(captions)} captions")
        refs = list(refs) if refs is not None else [str(x) if isinstance(x, str) else "" for x in images]
        ri = self.encoders["image"].encode_safe(images)
        rt = self.encoders["text"].encode_safe([captions[i] for i in ri.kept])
        kept = [ri.kept[j] for j in rt.kept]
        pl = [AnchorPayload(captions[i], refs[i], source) for i in kept]
        ids = self.add_anchor_embeddings(ri.embeddings[rt.kept], rt.embeddings, pl)
        return ids, ri.errors + rt.errors

    # -- items --------------------------------------------------------------------------
    def project(self, embeddings: np.ndarray, modality: str) -> SparseBatch:
        if modality not in ("image", "text"):
            raise ModalityError(f"modality must be 'image' or 'text'; got '{modality}'")
        return self.anchors.project(embeddings, modality, **self.engine_options)

    def records(self, embeddings: np.ndarray, modality: str, keys: Sequence[str],
                payloads: Sequence[dict], device_embeddings=None
                ) -> tuple[list[ItemRecord], list[InputError]]:
        """Project embeddings [n, d] into item records; rows with an all-zero relative vector
        (no anchor with positive similarity) are reported, not stored.

        ``device_embeddings``: the same rows as a tensor on the GPU (an encoder's output),
        projected there instead of uploading ``embeddings`` again."""
        # One snapshot of the anchor set: a writer thread may adopt a new version meanwhile,
        # and the records must carry the version they were projected at.
        return project_records(self.anchors, embeddings, modality, keys, payloads,
                               self.engine_options, self.taggers, device_embeddings)

    def add_items(self, items: Sequence[Any], modality: Literal["image", "text"],
                  payloads: Sequence[dict] | None = None) -> tuple[list[str], list[InputError]]:
        """Embed, project and upsert items; returns (stored ids, skipped errors)."""
        enc = self.encoders[modality]
        res = enc.encode_safe(items)
        payloads = list(payloads) if payloads is not None else [{} for _ in items]
        keys = [enc.content_key(items[i]) or str(items[i]) for i in res.kept]
        recs, errs = self.records(res.embeddings, modality, keys, [payloads[i] for i in res.kept])
        self.write(recs)
        return [r.item for r in recs], res.errors + errs

    def write(self, records: list[ItemRecord]) -> tuple[int, int]:
        """Upsert item records projected at this index's version; an item that already has a
        current point is updated in that point. -> (new, updated) distinct items.

        Never lands stale vectors: if the live anchor version moved (or moves while the batch
        is written) the batch is re-projected from its raw embeddings and rewritten at the live
        version; while an anchor update runs, it waits for it (see ``connectors.versioning``).
        """
        records = list({r.item: r for r in records}.values())
        if not records:
            return 0, 0
        from connectors.schema import declared, type_problem

        fields = declared(self.anchors.manifest)
        for r in records:  # refused before any of the batch is written
            problem = type_problem(r.payload, fields) if fields else None
            if problem:
                raise InputError(f"item '{r.item}': {problem}", r.item)
        projected = {r.valid_from for r in records}
        if len(projected) != 1:
            raise InputError(f"records of one write must share their anchor version; got "
                             f"{sorted(projected)}")
        batch = {"records": records, "at": projected.pop()}
        fold = self.anchors.fold
        if fold is not None and batch["at"] == self.version:
            # records made without the fold (point_records directly): fold them here, or the
            # normalised search would find them without a normaliser
            fold.fold_records([r for r in records if r.fold is None])

        def upsert(version: int, lease) -> tuple[int, int]:
            if version != batch["at"]:
                batch["records"], batch["at"] = self._reprojected(batch["records"], version)
            if lease.expiring():
                lease.renew()
            return self._upsert(batch["records"])

        return self._fenced(upsert, "write")

    def _fenced(self, act, what: str):
        """Run ``act(live version, writer lease)`` under a writer lease while no anchor
        update runs, and return its result once the live version did not move around it. An
        update that started (or finished) meanwhile may have scanned the items before ``act``
        touched them: wait for it, then act again at its version."""
        for _ in range(100):  # each round follows one anchor update; 100 is "never"
            with WriterLease(self.store, self.owner, self.timing.writer_ttl) as lease:
                state = live_state(self.store)
                if state.journal is None:
                    result = act(state.version, lease)
                    after = live_state(self.store)
                    if after.journal is None and after.version == state.version:
                        return result
            wait_for_update(self.store, self.where, self.timing)
        raise UpdateInProgressError(f"{self.where}: anchor updates kept moving the version under "
                                    f"this {what}; pause the updates and re-run")

    def delete_items(self, items: Sequence[str] = (), flt: Filter | None = None) -> int:
        """Delete items by logical id and/or every item whose payload matches ``flt``;
        -> how many were visible. MVCC: each item's point ends at the live version (readers
        pinned at an older version keep their snapshot until it is retired). Fenced like a
        write: if an anchor update is running, it waits for it, so the update cannot bring a
        deleted item back in its re-projected copy."""
        from connectors import filters

        targets = set(items)
        expr = filters.parse(flt)  # validated before anything is read or written
        if expr is not None:
            for batch in self.store.scroll_items(version=self.version):
                targets |= {r.item for r in batch
                            if filters.matches(expr, r.payload, r.modality)}
        if not targets:
            return 0
        found: list[int] = []  # visible at the first round (a repeat finds fewer)

        def end(version: int, _lease) -> int:
            heads = self.store.heads(sorted(targets))
            found.append(len(heads))
            self.store.close_items([h.id for h in heads.values()], version, "deleting items")
            return version

        version = self._fenced(end, "delete")
        if version != self.version:
            self.refresh()
        return found[0]

    def _reprojected(self, records: list[ItemRecord], version: int
                     ) -> tuple[list[ItemRecord], int]:
        if version != self.version:
            self.refresh()
        return reproject_mixed(self.anchors, records, self.version, self.engine_options), \
            self.version

    def _upsert(self, records: list[ItemRecord]) -> tuple[int, int]:
        heads = self.store.heads([r.item for r in records])
        for r in records:
            h = heads.get(r.item)
            if h is not None and h.valid_from <= r.valid_from:
                # same content, so the same vector at every version since the head's: update
                # (payload) in place instead of adding a point
                r.id, r.valid_from = h.id, h.valid_from
        self.store.write_items(records)
        return len(records) - len(heads), len(heads)

    # -- queries ------------------------------------------------------------------------
    def query_vector(self, text: str | None = None, image: Any = None,
                     image_weight: float = DEFAULT_IMAGE_WEIGHT
                     ) -> tuple[SparseBatch, str, int]:
        """The relative vector of one text or image query, or of both composed ("this photo,
        but at night") -> (vector, modality: "text", "image" or "composed", the anchor
        version it was projected at). Pass that version to :meth:`search_vectors`: with an
        anchor update landing in another thread, query and items then stay on one version.

        image_weight: with both given, the image's share of the composed query (the text
        gets 1 - image_weight); see :func:`asif_index.methods.unified.compose`."""
        # one snapshot: an update adopts a new anchor set object, never mutates this one
        anchors = self.anchors
        q, modality = self._query_on(anchors, text, image, image_weight)
        return q, modality, anchors.manifest.version

    def _query_on(self, anchors: AnchorSet, text: str | None, image: Any,
                  image_weight: float = DEFAULT_IMAGE_WEIGHT) -> tuple[SparseBatch, str]:
        if text is None and image is None:
            raise ModalityError("give text=..., image=... or both (a composed query)")
        if text is not None and not isinstance(text, str):
            raise ModalityError(f"text= takes a string; got {type(text).__name__} (use image=)")
        if text is not None and image is not None:
            from asif_index.methods.unified import compose

            if not 0 < image_weight < 1:
                raise ConfigError(f"image_weight must lie strictly between 0 and 1 for a "
                                  f"composed query; got {image_weight}")
            qi, _ = self._query_on(anchors, None, image)
            qt, _ = self._query_on(anchors, text, None)
            return compose([(qi, image_weight), (qt, 1 - image_weight)]), "composed"
        emb, modality = self._embed(text, image)
        with timing.stage("project"):
            return anchors.project(emb, modality, **self.engine_options), modality

    def _embed(self, text: str | None, image: Any) -> tuple[np.ndarray, str]:
        """One query's embedding [1, d] and its modality (exactly one of text, image)."""
        modality = "text" if text is not None else "image"
        with timing.stage("encode"):
            enc, item = self.encoders[modality], (text if text is not None else image)
            # encode_query keeps queries off the on-disk cache; an encoder written to the
            # bare interface (encode alone) encodes the query as a batch of one
            query = getattr(enc, "encode_query", None)
            return (query(item) if query is not None else enc.encode([item])), modality

    def search(self, text: str | None = None, image: Any = None, limit: int = 10,
               filter: Filter | None = None, image_weight: float = DEFAULT_IMAGE_WEIGHT,
               qbnorm: float | bool | None = None,
               query_keep: int | Literal["all"] | None = None, exact: bool = False,
               candidates: int | None = None, offset: int = 0) -> list[Hit]:
        """Items (either modality, narrowed by ``filter``) ranked for a text query, an image
        query, or both composed (``image_weight``: the image's share); hits ``offset`` ..
        ``offset + limit`` of the order (score desc, item id asc), so successive pages
        neither skip nor repeat a hit (offset + limit <= 10,000).

        qbnorm: query-bank normalisation (:mod:`asif_index.methods.qbnorm`) of the database's
        top 100, discounting items near every query.

        * None: the index recipe's temperature (``tuned``: 0.05), applied when the candidates
          are all of the other modality than the query (a text query over photos, by a
          ``modality`` filter or a photo collection): +3.6 points text-to-image R@10 on
          Flickr8k dev, while same-modality rankings lose about 1 point with it and stay
          plain, as do composed queries;
        * a temperature T (or True: the recipe's, else 0.05): applied to a single-modality
          query's candidates, whatever their modality;
        * False: off.

        Every hit's ``score`` is a relevance in [0, 1] (:mod:`connectors.search_stages`):
        the dot product s of a plain ranking, ``exp(s/T) / (exp(s/T) + Z(x))`` of a
        normalised one; ``similarity`` carries s either way. query_keep: as :meth:`search_vectors`'s.
        :meth:`search_result` also says which anchor version answered and whether the
        ranking was normalised. exact / candidates: as :meth:`search_vectors`'s."""
        return self.search_result(text, image, limit, filter, image_weight, qbnorm,
                                  query_keep, exact, candidates, offset).hits

    def search_result(self, text: str | None = None, image: Any = None, limit: int = 10,
                      filter: Filter | None = None,
                      image_weight: float = DEFAULT_IMAGE_WEIGHT,
                      qbnorm: float | bool | None = None,
                      query_keep: int | Literal["all"] | None = None, exact: bool = False,
                      candidates: int | None = None, offset: int = 0) -> "SearchResult":
        """:meth:`search`'s hits with the query's kind, the anchor version that answered,
        and the temperature they were normalised at (None: plain ranking)."""
        from connectors import search_stages

        limit, offset = search_stages.check_page(limit, offset)
        search_stages.check_candidates(candidates, limit)
        return search_stages.paged(
            lambda n: self._ranked(text, image, n, filter, image_weight, qbnorm, query_keep,
                                   exact, candidates if candidates is None
                                   else max(candidates, n)), limit, offset)

    def similar(self, item: str, limit: int = 10, filter: Filter | None = None,
                query_keep: int | Literal["all"] | None = None, exact: bool = False,
                candidates: int | None = None, offset: int = 0) -> "SearchResult":
        """Items like a stored one ("more like this": its stored vector as the query, on the
        anchor version it was projected at), paged as :meth:`search` is."""
        from connectors import search_stages

        limit, offset = search_stages.check_page(limit, offset)
        search_stages.check_candidates(candidates, limit)
        q, v = self.item_vector(item)
        return search_stages.paged(
            lambda n: SearchResult(self.search_vectors(
                q, n, filter, query_keep, version=v, exact=exact,
                candidates=candidates if candidates is None else max(candidates, n))[0],
                "item", v, None), limit, offset)

    def _ranked(self, text, image, limit, filter, image_weight, qbnorm, query_keep, exact,
                candidates) -> "SearchResult":
        anchors = self.anchors
        explicit, temperature = _temperature(anchors, qbnorm)
        if explicit and text is not None and image is not None:
            raise ConfigError("qbnorm re-ranks single-modality queries; drop it for a "
                              "composed (text + image) query")
        q, modality = self._query_on(anchors, text, image, image_weight)
        version = anchors.manifest.version
        if temperature is None or modality == "composed":
            hits = self.search_vectors(q, limit, filter, query_keep, version=version,
                                       exact=exact, candidates=candidates)[0]
            return SearchResult(hits, modality, version, None)
        from connectors import search_stages

        return search_stages.normalised(self, anchors, q, modality, limit, filter, query_keep,
                                        version, float(temperature), explicit, exact,
                                        candidates)

    def _stored(self, hits: list[Hit], version: int) -> list[ItemRecord]:
        """The stored points of ``hits`` as of ``version`` (their vectors, for re-ranking)."""
        # one read for all of them, also while an update has moved their heads to V+1
        found = self.store.points_at([h.id for h in hits], version)
        missing = [h.id for h in hits if h.id not in found]
        if missing:
            raise InputError(f"no item with id '{missing[0]}' in the index", missing[0])
        return [found[h.id] for h in hits]

    def _bank(self, anchors: AnchorSet, modality: str):
        """The query bank of ``modality`` at ``anchors``' version (built once per version)."""
        from asif_index.methods.qbnorm import QueryBank

        key = (anchors.manifest.version, modality, id(anchors))
        bank = self._banks.get(key)
        if bank is not None:
            return bank
        with self._bank_lock:  # one build per version and modality, however many searches
            bank = self._banks.get(key)
            if bank is None:
                bank = QueryBank(anchors, modality, **self.engine_options)
                # keep the banks of the anchor sets in use (the adopted one, and the one a
                # prepare() is building) and drop older ones
                keep = {id(self.anchors), id(anchors)}
                for old in [k for k in self._banks if k[2] not in keep]:
                    del self._banks[old]
                self._banks[key] = bank
        return bank

    def search_reranked(self, text: str | None = None, image: Any = None, limit: int = 10,
                        filter: Filter | None = None, candidates: int = 50, m: int = 50,
                        weight: float = 0.02) -> list[Hit]:
        """The database's plain ranking (no query-bank normalisation), its top ``candidates``
        re-ranked by score +
        ``weight`` x localized CKA (:func:`asif_index.methods.encoder_match.local_cka_scores`
        over each candidate's ``m`` strongest anchors, from its stored vector). Measured on
        Flickr8k dev in docs/evaluation.md: within noise of the plain ranking."""
        from asif_index.methods.encoder_match import local_cka_scores, rerank_local_cka

        if text is not None and not isinstance(text, str):
            raise ModalityError(f"text= takes a string; got {type(text).__name__} (use image=)")
        if (text is None) == (image is None):
            raise ModalityError("re-ranking takes exactly one of text=... or image=...")
        anchors = self.anchors
        emb, modality = self._embed(text, image)
        q = anchors.project(emb, modality, **self.engine_options)
        version = anchors.manifest.version
        hits = self.search_vectors(q, max(candidates, limit), filter, version=version)[0]
        if not hits:
            return hits
        # the query's cosines as its relative vector saw them: the engine's unit (centred
        # under a centred recipe) rows against the query, centred the same way
        e = emb[0] - (c if (c := anchors.center_of(modality)) is not None else 0)
        sims = anchors.engine_matrix(modality) @ (e / max(float(np.linalg.norm(e)), 1e-30))
        recs = self._stored(hits, version)
        # each candidate's values were powered with its own modality's p
        local = np.array([local_cka_scores(sims, anchors.rows_of,
                                           [(r.sparse_indices, r.sparse_values)],
                                           anchors.kp(h.modality)[1], m)[0]
                          for h, r in zip(hits, recs)])
        order = rerank_local_cka(np.array([h.score for h in hits]), local, weight)
        return [hits[i] for i in order[:limit]]

    def locate(self, image: Any, text: str, scales: Sequence[float] | None = None,
               background: bool = True):
        """Where in ``image`` is what ``text`` describes: a
        :class:`~asif_index.methods.locate.HeatMap` (values [H, W] in the photo's pixels,
        ``peak`` (x, y)) from crops at ``scales`` (fractions of the photo; default
        :data:`~asif_index.methods.locate.DEFAULT_SCALES`) scored against the text in this index's relative space. background: subtract
        each crop's mean score against scene prompts (the better default on Flickr8k dev,
        see docs/evaluation.md)."""
        from asif_index.methods import locate as loc

        anchors = self.anchors  # one anchor version for crops, query and background
        q, _ = self._query_on(anchors, text, None)
        bg = (anchors.project(self.encoders["text"].encode(list(loc.BACKGROUND_PROMPTS)),
                              "text", **self.engine_options) if background else None)
        return loc.locate(image, q, self.encoders["image"].encode,
                          lambda e: anchors.project(e, "image", **self.engine_options),
                          scales or loc.DEFAULT_SCALES, background=bg)[0]

    def search_vectors(self, q: SparseBatch, limit: int, flt: Filter | None = None,
                       query_keep: int | Literal["all"] | None = None,
                       version: int | None = None, fold: bool = False, exact: bool = False,
                       candidates: int | None = None, fold_candidates: int | None = None
                       ) -> list[list[Hit]]:
        """Ranked hits per query row. ``query_keep``: largest query entries sent to the
        database for this call (``"all"``: every entry; None: the index's ``query_keep``).
        ``version``: the anchor version ``q`` was projected at (default: the index's).
        fold: rank by s + fold(x), the items' folded QB-Norm values
        (:func:`connectors.search_stages.folded`): over the whole collection, or with
        ``fold_candidates`` C over the plain top C re-scored.
        exact: one exact stage over every item, even where the index has candidate vectors;
        candidates: the first stage's candidate count (None: by collection size, see
        ``connectors.search_stages``). Either way every returned hit's score is exact."""
        from connectors import filters, search_stages

        candidates = search_stages.check_candidates(candidates, limit)
        fold_candidates = search_stages.check_fold_candidates(fold_candidates, limit)
        flt = filters.parse(flt)
        if filters.uses_dates(flt) and not self.anchors.manifest.extra.get(DATE_TWINS_KEY):
            raise filters.FilterError(
                f"filter: date ranges need the date twins stored with each item, which "
                f"{self.where} predates (it was made before date ranges); migrate it into a new index "
                "('asif-index index migrate') or filter on numbers")

        self._pin()
        keep = self.query_keep if query_keep is None else (None if query_keep == "all" else query_keep)
        v = self.version if version is None else version
        out = []
        with timing.stage("search"):
            for r in range(len(q)):
                idx, val = self._pruned(*q.row(r), keep)
                out.append(search_stages.folded(self, idx, val, limit, flt, v, exact,
                                                candidates, fold_candidates) if fold
                           else search_stages.ranked(self, idx, val, limit, flt, v, exact,
                                                     candidates))
        return out

    def item_count(self, version: int | None = None) -> int:
        """Items visible at ``version``, re-counted at most every ITEM_COUNT_TTL seconds
        (the first stage's candidate count follows it; it need not be exact)."""
        v = self.version if version is None else version
        now = time.monotonic()
        hit = self._counted.get(v)
        if hit is None or now - hit[0] > ITEM_COUNT_TTL:
            hit = (now, self.store.count_items(version=v))
            self._counted = {v: hit}
        return hit[1]

    def item_vector(self, item: str) -> tuple[SparseBatch, int]:
        """The stored relative vector of an item as a one-row query ("more like this"), and
        the anchor version it was read at."""
        version = self.version
        rec = self.item(item, version)
        return SparseBatch(rec.sparse_indices[None].astype(np.int64),
                           rec.sparse_values[None].astype(np.float32),
                           np.zeros(1, np.float32)), version

    def _pruned(self, idx: np.ndarray, val: np.ndarray, m: int | None
                ) -> tuple[np.ndarray, np.ndarray]:
        if not m or len(val) <= m:
            return idx, val
        top = np.argpartition(-val, m - 1)[:m]
        return idx[top], val[top]

    def classify(self, images: Sequence[Any], labels: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES,
                 reduce: Literal["max", "mean"] = "mean") -> tuple[list[str], np.ndarray]:
        """Zero-shot labels for images (computed against the stored anchors)."""
        return self.classify_embeddings(self.encoders["image"].encode(images), labels,
                                        templates, reduce)

    def classify_embeddings(self, img: np.ndarray, labels: Sequence[str],
                            templates: Sequence[str] = DEFAULT_TEMPLATES,
                            reduce: Literal["max", "mean"] = "mean"
                            ) -> tuple[list[str], np.ndarray]:
        """:meth:`classify` for images already embedded (float32 [n, d_image])."""
        from asif_index.search import zero_shot_classify

        txt = self.encoders["text"].encode(prompts(labels, templates))
        # k and p left to the anchor set: each side by the index's recipe (a tuned index
        # projects images with k=3200 and prompts with p=4, as its items and queries)
        pred, scores = zero_shot_classify(self.anchors, img, txt, len(labels), len(templates),
                                          reduce)
        return [labels[i] for i in pred], scores

    # -- text-trained heads (asif_index.methods.text_classifier) ------------------------
    def _heads_cache(self) -> str:
        from asif_index.config import AsifSettings

        return self.cache_dir or str(AsifSettings.model_fields["cache_dir"].default)

    def train_text_classifier(self, name: str, labels: Sequence[str], noise: float = 0.0,
                              mitigation: str = "none", kind: str = "centroid",
                              mine_captions: bool = False, save: bool = True, **options):
        """Train a head on text only (label templates, and with ``mine_captions`` the anchor
        captions that name a label), keep it beside this index as ``name`` -> (head, path or
        None).

        noise / mitigation / kind: see
        :func:`asif_index.methods.text_classifier.train_text_head`; the defaults are the
        best on CIFAR-10 in docs/evaluation.md."""
        from asif_index.methods import text_classifier as tc
        from connectors.heads import check_head_name, head_path

        check_head_name(name)
        anchors = self.anchors
        shift = None
        if mitigation in ("mean-shift", "both"):
            shift = tc.modality_shift(anchors.engine_matrix("image"),
                                      anchors.engine_matrix("text"), anchors.kp("image"),
                                      anchors.kp("text"))
        head = tc.train_text_head(
            labels, self.encoders["text"].encode,
            lambda e: anchors.project(e, "text", **self.engine_options), anchors.ids,
            [pl.caption for pl in anchors.payloads] if mine_captions else (), noise,
            mitigation, kind, shift, **options)
        head.meta.update(name=name, anchor_version=anchors.manifest.version, k=self.k, p=self.p,
                         image_encoder=anchors.manifest.image_encoder,
                         text_encoder=anchors.manifest.text_encoder)
        path = head.save(head_path(self.store, anchors.manifest, self._heads_cache(), name)) \
            if save else None
        return head, path

    def text_head(self, name: str):
        """A head trained for this index (or a path to a head's .npz), checked against the
        index's encoders."""
        from asif_index.errors import EncoderMismatchError
        from connectors.heads import load_head

        head = load_head(self.store, self.anchors.manifest, self._heads_cache(), name)
        m = self.anchors.manifest
        for side, mine in (("image_encoder", m.image_encoder), ("text_encoder", m.text_encoder)):
            theirs = head.meta.get(side)
            if theirs and theirs != mine:
                raise EncoderMismatchError(f"head '{name}' was trained with {side} '{theirs}' "
                                           f"but this index uses '{mine}'; retrain it")
        return head

    def classify_with_head(self, embeddings: np.ndarray, head, modality: str = "image"
                           ) -> tuple[list[str], np.ndarray]:
        """Labels and probabilities [n, C] of embedded items [n, d] under a text-trained
        head (the same head reads images and texts)."""
        v = self.anchors.project(embeddings, modality, **self.engine_options)
        return head.predict(v, modality)

    def explain(self, item: str, text: str | None = None, image: Any = None,
                top: int = 10, qbnorm: float | bool | None = None) -> Explanation:
        """The shared anchors behind a query-item score, with their captions, and the score
        decomposed as :meth:`search` ranks a collection of the item's modality (``qbnorm``
        as there: by default a text query over photos is normalised, a same-modality pair
        is not)."""
        anchors = self.anchors  # query, item and captions from one anchor version
        q, modality = self._query_on(anchors, text, image)
        rec = self.item(item, anchors.manifest.version)
        explicit, temperature = _temperature(anchors, qbnorm)
        if modality == "composed" or not (explicit or rec.modality != modality):
            temperature = None
        qi, qv = q.row(0)
        common, a, b = np.intersect1d(qi, rec.sparse_indices, return_indices=True)
        contrib = qv[a] * rec.sparse_values[b]
        order = np.argsort(-contrib)[:top]
        rows = anchors.rows_of(common[order]) if len(order) else []
        out = [{"anchor_id": int(common[o]), "contribution": float(contrib[o]),
                "caption": anchors.payloads[r].caption,
                "image_ref": anchors.payloads[r].image_ref} for o, r in zip(order, rows)]
        sim = float(contrib.sum(dtype=np.float32))
        if temperature is None:
            return Explanation(sim, out, sim)
        from connectors.search_stages import relevance

        T, fold = float(temperature), anchors.fold
        if fold is not None and rec.fold is not None and \
                abs(fold.temperature - T) <= 1e-12 * T:
            logit = fold.normalised(float(np.float32(sim) + np.float32(rec.fold)))
        else:
            bank = fold.bank(modality) if fold is not None else self._bank(anchors, modality)
            logit = float(bank.rescore([sim], [(rec.sparse_indices, rec.sparse_values)], T)[0])
        return Explanation(relevance(logit), out, sim, T, sim / T - logit)

    def item(self, item: str, version: int | None = None) -> ItemRecord:
        """The point of a logical item visible at ``version`` (default: this index's)."""
        self._pin()
        version = self.version if version is None else version
        rec = self.store.points_at([item], version).get(item)
        if rec is None:
            raise InputError(f"no item with id '{item}' in the index", item)
        return rec

    def stats(self) -> dict[str, Any]:
        from connectors.readonly import index_stats

        return index_stats(self.store, self.anchors)


def _temperature(anchors: AnchorSet, qbnorm: float | bool | None) -> tuple[bool, float | None]:
    """(explicit, T) of a search's qbnorm argument (see :meth:`Index.search`): None is the
    recipe's default, True the recipe's temperature (else 0.05), False none."""
    from asif_index.methods.qbnorm import DEFAULT_TEMPERATURE, check_temperature

    explicit = qbnorm is not None and qbnorm is not False
    if qbnorm is True:
        qbnorm = anchors.recipe.qbnorm or DEFAULT_TEMPERATURE
    if explicit:
        check_temperature(qbnorm)
    return explicit, (qbnorm if explicit else None if qbnorm is False else anchors.recipe.qbnorm)


__all__ = ["Explanation", "Index", "anchors_at"]
