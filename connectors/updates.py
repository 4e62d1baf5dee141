"""Live, exact anchor updates (add / remove). Full rebuilds live in ``connectors.rebuild``.

Consistency (MVCC). Every item point is valid for anchor versions ``[valid_from, valid_to)``
and every query filters on its pinned version V. An update V -> V+1:

0. takes the updater lease (one updater at a time) and garbage-collects versions no reader
   holds (``connectors.versioning.retire``);
1. writes a journal (target V+1, the new anchor ids, the removed ids, its owner and a
   heartbeat) to the meta collection, then waits for writers that started a batch before
   it (their leases; see ``connectors.versioning``);
2. stores the new anchors with ``added_version = V+1`` and marks removed ones
   ``removed_version = V+1`` (both invisible to readers at V);
3. streams the items visible at V and finds exactly those whose top-k can change: a new
   anchor beats the item's stored k-th similarity, or its top-k held a removed anchor;
4. re-projects only those against the V+1 anchor set and writes each as a *new* point
   ``[V+1, FOREVER)``, then closes the old point at ``valid_to = V+1``;
5. flips the manifest's live version to V+1 (one single-row write: the atomic switch) and
   clears the journal.

Readers pinned at V see only V points before and after the flip; readers at V+1 see only V+1
points. A crash at any step leaves V intact; calling the update again resumes from the
journal, and since every write is deterministic (ids from content and version) it converges
to the same state. Superseded points are garbage-collected by a later update once no reader
lease pins their version; a reader whose version was retired gets VersionRetiredError.
"""

from __future__ import annotations

import copy
import time
from typing import Callable
from dataclasses import dataclass, field

import numpy as np

from asif_index.anchors import AnchorSet
from asif_index.errors import AnchorError, InputError, UpdateInProgressError
from connectors.base import (
    FOREVER,
    AnchorRecord,
    ItemRecord,
    VectorStore,
    anchor_payload_problem,
    point_id,
)
from connectors.versioning import (
    DEFAULT,
    JOURNAL,
    Coordination,
    alive,
    anchors_at,
    describe,
    drop_lease,
    live_leases,
    put_lease,
    reproject,
    retire,
    wait_for_writers,
)

UPDATER = "updater"
SIM_SLACK = 1e-6  # fp32 summation-order noise: treat near-ties as affected (re-projecting an
# unaffected item rewrites the identical vector, so a superset is exact)
MAX_REMOVE_PER_UPDATE = 4096  # keeps the journal one small meta row on every backend


@dataclass
class UpdateResult:
    version: int
    added_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    removed_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    items_scanned: int = 0
    items_touched: int = 0
    seconds: float = 0.0
    resumed: bool = False
    writers_waited: int = 0


def update_anchors(index, add: tuple | None = None, remove: np.ndarray | None = None,
                   batch: int = 512, timing: Coordination = DEFAULT,
                   _fail_after_batches: int | None = None,
                   progress: Callable[[int], None] | None = None,
                   item_pass: ItemPass | None = None) -> UpdateResult:
    """Apply one anchor update (add and/or remove) exactly; resumes an interrupted one.

    add: (image embeddings [n, d_i], text embeddings [n, d_t], payloads); remove: anchor ids.
    progress: called with the items scanned so far after each batch of the item pass.
    item_pass: runs steps 3-4 elsewhere (``connectors.distributed.updates``): called with the
    :class:`ItemPassPlan` and a heartbeat to call at least every ``timing.heartbeat_ttl``,
    it returns (items scanned, items touched); the journal, anchors and the switch stay here.
    Raises :class:`UpdateInProgressError` while another process's update is alive.
    """
    store = index.store
    where = index.where
    owner = index.owner
    # Updaters exclude each other: own lease first, then look for others (Dekker).
    put_lease(store, UPDATER, owner, timing.heartbeat_ttl)
    others = {k: d for k, d in live_leases(store, UPDATER).items() if d.get("owner") != owner}
    if others:
        drop_lease(store, UPDATER, owner)
        d = next(iter(others.values()))
        raise UpdateInProgressError(
            f"another anchor update is running on {where} ({describe(d)}); wait for it to "
            "finish ('asif-index anchors status' shows it), then re-run")
    journal = None
    try:
        journal = store.get_doc(JOURNAL)
        if journal and alive(journal) and journal.get("owner") != owner:
            raise UpdateInProgressError(
                f"an anchor update to version {journal.get('target')} is running on {where} "
                f"({describe(journal)}); wait for it to finish, then re-run")
        result = _update(index, store, where, owner, journal, add, remove, batch, timing,
                         _fail_after_batches, progress, item_pass)
        journal = None
        return result
    except BaseException:
        # Interrupted (Ctrl-C, error): mark the journal dead at once so that a resume does not
        # wait for its heartbeat to lapse. A SIGKILL leaves it to expire.
        j = _try(store.get_doc, JOURNAL)
        if j and j.get("owner") == owner:
            j["expires"] = 0.0
            _try(store.put_doc, JOURNAL, j)
        raise
    finally:
        _try(drop_lease, store, UPDATER, owner)


@dataclass
class ItemPassPlan:
    """What the item pass of one update needs, picklable so workers can run parts of it:
    items visible at ``version`` are checked against the anchors of ``target``."""

    version: int
    target: int
    new_set: AnchorSet
    add_ids: np.ndarray  # int64
    rem_ids: np.ndarray  # int64
    old_n: int  # anchors at ``version``
    engine_options: dict


ItemPass = Callable[[ItemPassPlan, Callable[[], None]], tuple[int, int]]


def _local_hooks(heartbeat, progress, fail_after):
    def on_batch(n_batch: int, scanned: int) -> None:
        if fail_after is not None and n_batch >= fail_after:
            raise KeyboardInterrupt("simulated crash during the item pass")
        heartbeat()
        if progress is not None:
            progress(scanned)
    return on_batch


def pass_items(store: VectorStore, plan: ItemPassPlan, batch: int = 512, id_range=None,
               on_batch: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Steps 3-4 of an update over the items whose point id is in ``id_range`` (all: None):
    every item whose top-k can change gets a new point valid from the target version and its
    old point closed there. -> (items scanned, items touched). Deterministic, so re-running
    a range (a retried worker, a resumed update) rewrites identical points.
    on_batch(batch number, items scanned so far) runs before each batch is processed."""
    scanned = touched = 0
    for n_batch, recs in enumerate(store.scroll_items(batch, plan.version, id_range)):
        scanned += len(recs)
        if on_batch is not None:
            on_batch(n_batch, scanned)
        touched += _apply(store, plan, recs)
    return scanned, touched


KTH_BUCKETS = 8  # k-th similarity ranges searched apart (each with its own lower bound)
KTH_SAMPLE = 4096


def bounded_candidates(store: VectorStore, plan: ItemPassPlan) -> set[str] | None:
    """The points an update can change, found by the database without reading the others:
    for new anchors, every point whose raw embedding beats (its bucket's lowest) k-th
    similarity against one of them (an exact dense threshold search per k-th bucket); for
    removed anchors, the points holding them and those whose k-th similarity is <= 0 (they
    may hold one at weight 0). A superset of the affected points, so the update stays exact.
    None: this store or recipe cannot bound it (a centred recipe compares centred vectors;
    fewer anchors than k make every item affected); the caller scans."""
    new_set = plan.new_set
    if plan.old_n < max(new_set.kp("image")[0], new_set.kp("text")[0]):
        return None
    if any(new_set.center_of(m) is not None for m in ("image", "text")):
        return None
    out: set[str] = set()
    try:
        kth = np.sort(store.kth_sample(plan.version, KTH_SAMPLE))
        if not len(kth):
            return out
        # bucket edges from the sample; the lowest bucket takes all the rest, whatever its
        # similarity (its bound is -1: a few points, the price of exactness)
        edges = np.unique(np.quantile(kth, np.linspace(0, 1, KTH_BUCKETS + 1)[:-1]))
        lows = [-2.0, *edges.tolist()]
        highs = [*edges.tolist(), np.inf]
        rows = new_set.rows_of(plan.add_ids) if len(plan.add_ids) else None
        for mod in ("image", "text"):
            if rows is not None:
                q = new_set.engine_matrix(mod)[rows]
                for lo, hi in zip(lows, highs):
                    out |= store.points_near(mod, q, lo - SIM_SLACK, (lo, hi), plan.version)
            if len(plan.rem_ids):
                probe = np.zeros((1, new_set.matrix(mod).shape[1]), np.float32)
                probe[0, 0] = 1.0
                out |= store.points_near(mod, probe, -2.0, (-np.inf, SIM_SLACK), plan.version)
        if len(plan.rem_ids):
            out |= store.points_holding(plan.rem_ids.tolist(), plan.version)
    except NotImplementedError:
        return None
    return out


def pass_candidates(store: VectorStore, plan: ItemPassPlan, candidates: set[str],
                    batch: int = 512, on_batch: Callable[[int, int], None] | None = None
                    ) -> tuple[int, int]:
    """Steps 3-4 over the candidate points only (:func:`bounded_candidates`). -> (points
    read, items touched)."""
    ids = sorted(candidates)
    read = touched = 0
    for n_batch, s in enumerate(range(0, len(ids), batch)):
        recs = [r for r in store.fetch_items(ids[s:s + batch]) if r.visible(plan.version)]
        read += len(recs)
        if on_batch is not None:
            on_batch(n_batch, read)
        touched += _apply(store, plan, recs)
    return read, touched


def _apply(store: VectorStore, plan: ItemPassPlan, recs: list[ItemRecord]) -> int:
    """Re-project the affected points of one batch; -> how many."""
    new_set, add_ids, rem_ids, target = plan.new_set, plan.add_ids, plan.rem_ids, plan.target
    new_rows = new_set.rows_of(add_ids) if len(add_ids) else np.zeros(0, np.int64)
    touched = 0
    for mod in ("image", "text"):
        group = [r for r in recs if r.modality == mod]
        if not group:
            continue
        k, p = new_set.kp(mod)
        hit, sims = affected(group, new_set.engine_matrix(mod)[new_rows], rem_ids,
                             plan.old_n, k, center=new_set.center_of(mod))
        todo = np.flatnonzero(hit)
        if not len(todo):
            continue
        # Add-only updates merge each item's recovered top-k with its similarities to the
        # new anchors: O(k + n_new) per item instead of a projection over all N anchors.
        # Merging beat re-projecting the affected items at every size measured, even at
        # n_new = 3000 > k (benchmarks/incremental.py: 3.5 s vs 11 s, 26 s vs 38 s).
        use_merge = len(rem_ids) == 0 and sims is not None
        mergeable = (np.array([mergeable_record(group[j], plan.old_n, k) for j in todo],
                              bool) if use_merge else np.zeros(len(todo), bool))
        fresh: list[ItemRecord] = []
        if mergeable.any():
            rows = todo[mergeable]
            merged, unsure = merge_new_anchors([group[j] for j in rows], sims[rows],
                                               add_ids, k, p, target,
                                               hub=_hub_lookup(new_set, mod))
            if new_set.fold is not None:
                new_set.fold.fold_records(merged)
            fresh += merged
            mergeable[np.flatnonzero(mergeable)[unsure]] = False
        full = [group[j] for j in todo[~mergeable]]
        if full:
            fresh += reproject(new_set, full, mod, target, plan.engine_options)
        # read back before the old points are closed: never retire what was not kept
        store.write_items(fresh, f"re-projecting items for anchor version {target}")
        store.close_items([group[j].id for j in todo if group[j].valid_from < target],
                          target, f"closing superseded points at version {target}")
        touched += len(todo)
    return touched


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:  # best effort while already failing
        return None


def _update(index, store: VectorStore, where: str, owner: str, journal: dict | None, add,
            remove, batch: int, timing: Coordination, fail_after: int | None,
            progress: Callable[[int], None] | None = None,
            item_pass: ItemPass | None = None) -> UpdateResult:
    t0 = time.perf_counter()
    live = store.read_manifest()
    if journal and journal["target"] == live.version:  # flipped, journal not yet cleared
        store.put_doc(JOURNAL, None)
        journal = None
    if live.version != index.version:
        index.refresh()
    v = index.version
    resumed = journal is not None
    if journal is None:
        if add is None and (remove is None or len(remove) == 0):
            return UpdateResult(v)
        n_add = 0 if add is None else len(add[0])
        if add is not None:
            for pl in add[2]:
                problem = anchor_payload_problem(pl)
                if problem:
                    raise InputError(f"anchor '{pl.caption[:60]}': {problem}; nothing was "
                                     "written", pl.key or None)
        rem = [] if remove is None else sorted({int(x) for x in remove})
        if len(rem) > MAX_REMOVE_PER_UPDATE:
            raise AnchorError(f"remove at most {MAX_REMOVE_PER_UPDATE} anchors per update "
                              f"(got {len(rem)}); Index.remove_anchors splits larger removals")
        if rem:
            index.anchors.rows_of(np.asarray(rem))  # unknown ids -> AnchorError, nothing written
        retire(store, v)  # GC what no reader at >= v (nor any pinned reader) can see
        first = int(max(index.anchors.next_id, int(live.extra.get("next_id", 0))))
        journal = {"target": v + 1, "add_first": first, "add_count": n_add, "remove": rem,
                   "next_id": first + n_add}
    journal.update(owner=owner, beat=time.time(), expires=time.time() + timing.heartbeat_ttl)
    store.put_doc(JOURNAL, journal)

    def heartbeat() -> None:
        journal.update(beat=time.time(), expires=time.time() + timing.heartbeat_ttl)
        store.put_doc(JOURNAL, journal)
        put_lease(store, UPDATER, owner, timing.heartbeat_ttl)

    # Writers that read "no update" before the journal landed finish their batch first.
    waited = wait_for_writers(store, where, timing)
    target = journal["target"]
    add_ids = np.arange(journal["add_first"], journal["add_first"] + journal["add_count"],
                        dtype=np.int64)
    rem_ids = np.asarray(journal["remove"], np.int64)

    # 2. anchors, invisible to readers at v
    man = copy.deepcopy(live)
    man.extra["next_id"] = int(journal["next_id"])
    if add is not None and len(add[0]) == len(add_ids):
        # The normal path: the new set is the pinned set plus the staged pairs minus the
        # removed ones, built in memory (reloading N anchors from the store is O(N)).
        img, txt, payloads = add
        new_set = copy.copy(index.anchors)
        new_set.manifest = copy.deepcopy(man)
        new_set._engines = {}
        if len(add_ids):
            new_set.add(img, txt, payloads, ids=add_ids.astype(np.uint32))
            rows = new_set.rows_of(add_ids)
            now = time.time()
            store.write_anchors([
                AnchorRecord(int(i), new_set.image[r], new_set.text[r], p.caption, p.image_ref,
                             p.source, now, p.key, added_version=target)
                for r, i, p in zip(rows, add_ids, payloads)])
        if len(rem_ids):
            new_set.remove(rem_ids)
    else:
        have = {a.id for a in store.fetch_anchors(None) if a.added_version == target}
        if not set(add_ids.tolist()) <= have:
            _rollback(store, add_ids, rem_ids)
            raise AnchorError(
                "the interrupted anchor update had not stored its new anchors yet; it was rolled "
                "back: run the same 'anchors add' again"
            )
        new_set = None  # read back after the removal marks below
    if len(rem_ids):
        rem = set(rem_ids.tolist())
        recs = [a for a in store.fetch_anchors(v) if a.id in rem]
        for a in recs:
            a.removed_version = target
        store.write_anchors(recs, "marking removed anchors")
    if new_set is None:
        new_set = anchors_at(store, man, target)
    new_set.manifest.version = target
    _freeze_fold(index, store, man, new_set, v)

    # 3-4. the affected items, by this process or by workers (``item_pass``)
    plan = ItemPassPlan(v, target, new_set, add_ids.astype(np.int64), rem_ids,
                        len(index.anchors), dict(index.engine_options))
    candidates = bounded_candidates(store, plan) if item_pass is None else None
    if candidates is not None:
        scanned, touched = pass_candidates(store, plan, candidates, batch,
                                           _local_hooks(heartbeat, progress, fail_after))
    elif item_pass is None:
        scanned, touched = pass_items(store, plan, batch, None,
                                      _local_hooks(heartbeat, progress, fail_after))
    else:
        scanned, touched = item_pass(plan, heartbeat)

    # 5. the atomic switch
    if "centers" in new_set.manifest.extra:  # frozen by the first anchors of a centred recipe
        man.extra["centers"] = new_set.manifest.extra["centers"]
    man.version = target
    store.switch_manifest(man)
    store.put_doc(JOURNAL, None)
    index._adopt(new_set)
    return UpdateResult(target, add_ids.astype(np.uint32), rem_ids, scanned, touched,
                        time.perf_counter() - t0, resumed, waited)


def _freeze_fold(index, store: VectorStore, man, new_set: AnchorSet, version: int) -> None:
    """Fold QB-Norm into the items from this version on when the recipe normalises and the
    index holds no items yet (their fold values need no rewrite), or keep the frozen bank.
    An index that already holds unfolded items keeps re-ranking until it is rebuilt."""
    from asif_index.methods.qbnorm import BANK_STRIDE
    from asif_index.methods.qbnorm_fold import FOLD_KEY, FoldSpec, QBNormFold

    T = new_set.recipe.qbnorm
    if T is None or not len(new_set):
        return
    if FOLD_KEY in man.extra and store.count_items(version=version) > 0:
        new_set.fold = index.anchors.fold  # the same frozen bank (and its built banks)
        return
    if FOLD_KEY not in man.extra and store.count_items() > 0:
        return
    spec = FoldSpec.freeze(new_set, T, BANK_STRIDE)
    man.extra[FOLD_KEY] = spec.to_dict()
    new_set.manifest.extra[FOLD_KEY] = spec.to_dict()
    new_set.fold = QBNormFold(spec, lambda: new_set, index.engine_options)


def mergeable_record(r: ItemRecord, old_n: int, k: int) -> bool:
    """True when the item's full top-k (raw similarities) can be recovered from its stored
    weights: all min(k, N) entries stored (none clipped to zero) and N >= k."""
    return old_n >= k and r.kth_similarity > 0 and len(r.sparse_indices) == k


def _hub_lookup(anchors: AnchorSet, modality: str):
    """ids -> the recipe's hub weights of those anchors, or None without hub weights."""
    if anchors.hub_weights(modality) is None:
        return None
    return lambda ids: anchors.hub_weights_of(ids, modality)


def recover_similarities(values: np.ndarray, kth: np.ndarray, p: float,
                         scale: np.ndarray | None = None) -> np.ndarray:
    """Raw cosine similarities from relative-vector weights: w_i = g_i s_i^p / Z (g_i the
    anchors' hub weights, ``scale``; 1 without), so s_i = s_k * (w_i/g_i / (w_k/g_k))^(1/p)
    with s_k the stored k-th similarity, the smallest w_i/g_i. values, scale: [b, k]."""
    if scale is not None:
        values = values / scale
    wk = values.min(axis=1, keepdims=True)
    return kth[:, None] * (values / wk) ** (1.0 / p)


MERGE_TIE_TOL = 1e-5  # recovered and fresh similarities agree to ~1e-7; closer calls re-project


def merge_new_anchors(recs: list[ItemRecord], new_sims: np.ndarray, new_ids: np.ndarray,
                      k: int, p: float, target: int, hub=None
                      ) -> tuple[list[ItemRecord], np.ndarray]:
    """New top-k of each item = top-k of (its old top-k, the new anchors), exactly as a
    projection over all anchors would rank them (ties: older anchor, i.e. lower id, first).

    -> (records, positions in ``recs`` that must be re-projected instead). Recovered
    similarities carry rounding error, so where the k-th and (k+1)-th merged values are
    within MERGE_TIE_TOL (a new anchor duplicating an old one, say) membership cannot be
    decided from them; those items are left to a full projection. ``hub``: anchor ids ->
    their hub weights (the recipe's; None: none), divided out before the similarities are
    recovered and multiplied back into the merged weights."""
    from asif_index.projection import relative_weights

    b = len(recs)
    old_ids = np.stack([r.sparse_indices for r in recs]).astype(np.int64)
    old_vals = np.stack([r.sparse_values for r in recs]).astype(np.float64)
    kth = np.array([r.kth_similarity for r in recs], np.float64)
    # Stored indices are ascending and every new id exceeds every old one, so the
    # concatenation is already in id order: one stable sort gives the tie rule.
    old_scale = None if hub is None else hub(old_ids).astype(np.float64)
    sims = np.concatenate([recover_similarities(old_vals, kth, p, old_scale),
                           new_sims.astype(np.float64)], 1)
    # new_ids come from a range (ascending), matching the columns of new_sims
    ids = np.concatenate([old_ids, np.broadcast_to(new_ids, (b, len(new_ids)))], 1)
    order = np.argsort(-sims, axis=1, kind="stable")
    top = order[:, :k]
    ambiguous = np.zeros(b, bool)
    if sims.shape[1] > k:
        ranked = np.take_along_axis(sims, order[:, k - 1:k + 1], 1)
        ambiguous = (ranked[:, 0] - ranked[:, 1]) < MERGE_TIE_TOL
    top_s = np.take_along_axis(sims, top, 1).astype(np.float32)
    top_i = np.take_along_axis(ids, top, 1)
    w = relative_weights(top_s, p, None if hub is None else hub(top_i))
    out = []
    for j, r in enumerate(recs):
        if ambiguous[j]:
            continue
        keep = w[j] > 0
        o = np.argsort(top_i[j][keep])
        out.append(ItemRecord(point_id(r.item, target), r.item, r.modality, top_i[j][keep][o],
                              w[j][keep][o], r.embedding, float(top_s[j, -1]), target, FOREVER,
                              r.payload))
    return out, np.flatnonzero(ambiguous)


def affected(recs: list[ItemRecord], new_anchor_emb: np.ndarray, removed: np.ndarray,
             old_n: int, k: int, center: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Which items' top-k can change: (bool [len(recs)], similarities to the new anchors
    float32 [len(recs), n_new] or None).

    Adding: a new anchor whose similarity beats the item's k-th (exact ties lose to older
    anchors, which sit at lower rows), or every item while N < k (its top-k holds all).
    ``new_anchor_emb`` are the rows the engine searches (a centred recipe's, centred and
    renormalised) and ``center`` the mean such a recipe subtracts from the items first.
    Removing: the item's top-k held a removed anchor; items with a k-th similarity <= 0 may
    hold it at weight 0 (not stored), so they are re-projected too.
    """
    hit = np.zeros(len(recs), bool)
    sims = None
    if len(new_anchor_emb):
        emb = np.stack([r.embedding for r in recs]).astype(np.float32)
        if center is not None:
            emb -= center
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        sims = emb @ new_anchor_emb.T
        if old_n < k:
            hit[:] = True
        else:
            kth = np.array([r.kth_similarity for r in recs], np.float32)
            hit |= sims.max(axis=1) > kth - SIM_SLACK
    if len(removed):
        rem = set(removed.tolist())
        hit |= np.array([bool(rem.intersection(r.sparse_indices.tolist())) or r.kth_similarity <= 0
                         for r in recs])
    return hit, sims


def _rollback(store: VectorStore, add_ids: np.ndarray, rem_ids: np.ndarray) -> None:
    if len(add_ids):
        store.delete_anchors(add_ids.tolist())
    if len(rem_ids):
        recs = [a for a in store.fetch_anchors(None) if a.id in set(rem_ids.tolist())]
        for a in recs:
            a.removed_version = FOREVER
        store.upsert_anchors(recs)
    store.put_doc(JOURNAL, None)


def status(store: VectorStore) -> dict:
    """Live version, the pending update (state running/interrupted, owner, heartbeat), counts."""
    man = store.read_manifest()
    j = store.get_doc(JOURNAL)
    pending = None
    if j:
        pending = {"target_version": j.get("target"), "adds": j.get("add_count", 0),
                   "removes": len(j.get("remove", [])),
                   "state": "running" if alive(j) else "interrupted",
                   "owner": j.get("owner"),
                   "heartbeat_s_ago": round(max(0.0, time.time() - float(j.get("beat", 0))), 1)}
    return {"live_version": man.version if man else None, "pending_update": pending,
            "visible_items": store.count_items(version=man.version) if man else 0,
            "stored_points": store.count_items()}
