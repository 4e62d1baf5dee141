"""How writers, anchor updaters and readers of one index coordinate through the database.

Every record below lives in the index's meta collection, so processes on different machines
see the same state; nothing is trusted to one process's memory.

* ``manifest``: the live anchor version V (one single-row write flips it).
* ``update``: the journal of a running or interrupted anchor update V -> V+1, with its
  owner and a heartbeat expiry the updater renews every batch. A live heartbeat means "in
  progress"; an expired one means "died: resume it".
* ``writer:<owner>``: held by an ingest writer around each batch it writes (owner, expiry).
* ``reader:<owner>``: held by an open :class:`~connectors.index.Index`: the version it is
  pinned to, renewed while it searches.
* ``retention``: ``retired_below``: points visible only below it may be deleted.

The writer protocol (no write projected against anchors V ever lands stale in V+1):

1. put ``writer:<me>``; 2. read the journal and the live version; if an update is running,
   drop the lease and wait for it (bounded by its heartbeat), then re-project the batch;
   if the live version moved, re-project the batch against it; 3. write; 4. read the
   journal and the live version again: unchanged -> done; changed -> the batch may have
   been missed by the update's item pass, so wait, re-project, rewrite; 5. drop the lease.

The updater writes its journal first and then waits until no writer lease is live. Both
sides write their own record before reading the other's, so at least one sees the other
(the Dekker pattern on a linearizable store): either the writer sees the journal and backs
off, or the updater sees the writer and waits for it. A writer stalled past its lease is
caught by step 4 and re-projects what it wrote.

Readers: GC of old versions (at the start of each update) writes ``retention`` first and
then reads the reader leases; a reader renews its lease and then reads ``retention``. So a
reader is either protected (GC saw its lease and keeps its version) or told (its version
is retired: :class:`~asif_index.errors.VersionRetiredError`, "refresh"); never silently
served an empty or partial version.

Clocks: expiries are wall-clock seconds; hosts that share an index need clocks within a
small fraction of the shortest TTL (NTP gives milliseconds).
"""

from __future__ import annotations

import copy
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.errors import (
    UpdateInProgressError,
    UpdateInterruptedError,
    VersionRetiredError,
)
from connectors.base import ItemRecord, VectorStore, point_records

JOURNAL = "update"
RETENTION = "retention"
WRITER = "writer"
READER = "reader"


@dataclass
class Coordination:
    """Lease lengths and waits (seconds). ``writer_ttl`` must exceed the time one batch write
    can take (the store's request timeout times its attempts); ``heartbeat_ttl`` the time one
    batch of an update's item pass takes."""

    writer_ttl: float = 120.0
    reader_ttl: float = 600.0
    heartbeat_ttl: float = 60.0
    wait_for_update: float = 3600.0  # a writer waits this long for a running update
    poll: float = 0.1


DEFAULT = Coordination()


def new_owner() -> str:
    """A process-unique owner name that says where it runs: host:pid:nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------ leases
def put_lease(store: VectorStore, kind: str, owner: str, ttl: float, **fields) -> dict:
    now = time.time()
    doc = {"owner": owner, "beat": now, "expires": now + ttl, **fields}
    store.put_doc(f"{kind}:{owner}", doc)
    return doc


def drop_lease(store: VectorStore, kind: str, owner: str) -> None:
    store.put_doc(f"{kind}:{owner}", None)


def live_leases(store: VectorStore, kind: str) -> dict[str, dict]:
    """Leases of ``kind`` whose holder is alive, by key."""
    return {k: d for k, d in store.list_docs(kind).items() if alive(d)}


def alive(doc: dict | None) -> bool:
    """A lease or journal whose holder may still be running: its expiry has not passed and,
    when the holder ran on this host, its process still exists (a killed process is known
    dead at once instead of after its lease lapses)."""
    if not doc or float(doc.get("expires", 0)) <= time.time():
        return False
    host, _, rest = str(doc.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, another user's
            return True
    return True


def describe(doc: dict) -> str:
    """'owner H:P:N, heartbeat 3.2 s ago' for messages."""
    beat = float(doc.get("beat", doc.get("expires", 0)))
    return f"owner {doc.get('owner', '?')}, last heartbeat {max(0.0, time.time() - beat):.1f} s ago"


class WriterLease:
    """``with WriterLease(store, owner):`` around one batch write (see the module doc)."""

    def __init__(self, store: VectorStore, owner: str, ttl: float) -> None:
        self.store, self.owner, self.ttl = store, owner, ttl

    def __enter__(self) -> "WriterLease":
        self.doc = put_lease(self.store, WRITER, self.owner, self.ttl)
        return self

    def expiring(self, margin: float = 0.5) -> bool:
        """True when less than ``margin`` of the lease is left (renew before writing)."""
        return self.doc["expires"] - time.time() < margin * self.ttl

    def renew(self) -> None:
        self.doc = put_lease(self.store, WRITER, self.owner, self.ttl)

    def __exit__(self, *exc) -> None:
        drop_lease(self.store, WRITER, self.owner)


# --------------------------------------------------------------------------- live state
@dataclass
class LiveState:
    version: int
    journal: dict | None


def live_state(store: VectorStore) -> LiveState:
    """The journal, then the manifest: read in this order, a journal cleared between the two
    reads shows as (new version, no journal), never as (old version, no journal)."""
    journal = store.get_doc(JOURNAL)
    man = store.read_manifest()
    return LiveState(man.version if man else 0, journal)


def wait_for_update(store: VectorStore, where: str, timing: Coordination = DEFAULT,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Block while an anchor update runs; raise if it died or outlasts ``wait_for_update``."""
    deadline = time.monotonic() + timing.wait_for_update
    while True:
        j = store.get_doc(JOURNAL)
        if not j:
            return
        if not alive(j):
            raise UpdateInterruptedError(
                f"the anchor update to version {j.get('target')} on {where} was interrupted "
                f"({describe(j)}); finish it with 'asif-index anchors status --resume', then "
                "re-run this command (ingest resumes from its checkpoint)")
        if time.monotonic() > deadline:
            raise UpdateInProgressError(
                f"an anchor update on {where} is still running after "
                f"{timing.wait_for_update:.0f} s ({describe(j)}); re-run this command when it "
                "has finished ('asif-index anchors status' shows it)")
        sleep(timing.poll)


def wait_for_writers(store: VectorStore, where: str, timing: Coordination = DEFAULT,
                     sleep: Callable[[float], None] = time.sleep) -> int:
    """Block until no writer lease is live (each expires within ``writer_ttl``); -> how many
    writers were waited for."""
    seen: set[str] = set()
    deadline = time.monotonic() + timing.writer_ttl + 5 * timing.poll
    while True:
        live = live_leases(store, WRITER)
        if not live:
            return len(seen)
        seen |= set(live)
        if time.monotonic() > deadline:  # clock skew: leases "from the future"
            raise UpdateInProgressError(
                f"writers {sorted(live)} on {where} still hold leases after "
                f"{timing.writer_ttl:.0f} s; check the hosts' clocks")
        sleep(timing.poll)


# ----------------------------------------------------------------------------- readers
def pin_reader(store: VectorStore, owner: str, version: int, where: str,
               timing: Coordination = DEFAULT) -> float:
    """Renew a reader's lease on ``version``, then check it was not retired; -> renew-by time."""
    put_lease(store, READER, owner, timing.reader_ttl, version=int(version))
    ret = store.get_doc(RETENTION) or {}
    below = int(ret.get("retired_below", 0))
    if version < below:
        drop_lease(store, READER, owner)
        raise VersionRetiredError(
            f"anchor version {version} of {where} was retired (versions below {below} are "
            "garbage-collected); refresh the reader (Index.refresh(), or reopen it) to move to "
            "the live version")
    return time.time() + timing.reader_ttl / 3


def retire(store: VectorStore, live_version: int) -> int:
    """Garbage-collect versions no reader can need: those below the live version and below
    every live reader lease. -> points deleted."""
    # Intent first (readers that renew after this see it), then the leases.
    before = int((store.get_doc(RETENTION) or {}).get("retired_below", 0))
    if live_version <= before:
        return 0
    store.put_doc(RETENTION, {"retired_below": int(live_version), "at": time.time()})
    leases = store.list_docs(READER)
    pins = [int(d.get("version", live_version)) for d in leases.values() if alive(d)]
    keep = max(before, min([live_version, *pins]))
    if keep != live_version:
        store.put_doc(RETENTION, {"retired_below": keep, "at": time.time()})
    # Expired leases are litter; drop them with the points.
    now = time.time()
    for key, d in leases.items():
        if float(d.get("expires", 0)) < now - 60:
            store.put_doc(key, None)
    from asif_index.methods.qbnorm_fold import FOLD_KEY

    man = store.read_manifest()
    fold = (man.extra.get(FOLD_KEY) if man else None) or {}
    bank = int(fold.get("bank_version", keep))
    return store.delete_expired(keep, anchor_version=min(keep, bank))


# --------------------------------------------------------------------- anchors, points
def anchors_at(store: VectorStore, man: AnchorManifest, version: int) -> AnchorSet:
    """The anchor set as it was at ``version``, rebuilt from the anchors collection."""
    man = copy.deepcopy(man)
    anchors = AnchorSet(man)
    recs = store.fetch_anchors(version)
    if recs:
        anchors.add(np.stack([r.image for r in recs]), np.stack([r.text for r in recs]),
                    [AnchorPayload(r.caption, r.image_ref, r.source, r.key) for r in recs],
                    ids=np.array([r.id for r in recs], np.uint32))
        anchors.added_at = np.array([r.added_at for r in recs])
    anchors.manifest.version = version  # add() bumped it
    anchors.next_id = max(anchors.next_id, int(man.extra.get("next_id", 0)))
    return attach_fold(store, anchors)


def attach_fold(store: VectorStore, anchors: AnchorSet, engine_options: dict | None = None
                ) -> AnchorSet:
    """Give ``anchors`` the index's folded QB-Norm (manifest ``qbnorm_fold``), whose bank is
    loaded from the anchors of its version when a writer first needs it."""
    from asif_index.methods.qbnorm_fold import FOLD_KEY, FoldSpec, QBNormFold

    doc = anchors.manifest.extra.get(FOLD_KEY)
    if not doc:
        anchors.fold = None
        return anchors
    spec = FoldSpec.from_dict(doc)
    if anchors.fold is not None and anchors.fold.spec == spec:
        return anchors
    if spec.bank_version == anchors.manifest.version:
        def load(s=anchors):
            return s
    else:
        man = copy.deepcopy(anchors.manifest)

        def load():
            bank = anchors_at_plain(store, man, spec.bank_version)
            if len(range(0, len(bank), spec.stride)) != spec.bank_size:  # collected
                from asif_index.errors import CollectionError

                raise CollectionError(
                    f"{store.location}: the anchors of QB-Norm bank version "
                    f"{spec.bank_version} are no longer stored; rebuild the index "
                    "('asif-index anchors rebuild')")
            return bank
    anchors.fold = QBNormFold(spec, load, engine_options)
    return anchors


def anchors_at_plain(store: VectorStore, man: AnchorManifest, version: int) -> AnchorSet:
    """:func:`anchors_at` without the fold (the fold's own bank set)."""
    man = copy.deepcopy(man)
    man.extra.pop("qbnorm_fold", None)
    s = anchors_at(store, man, version)
    s.manifest.extra = dict(s.manifest.extra)
    return s


def reproject(anchors: AnchorSet, recs: list[ItemRecord], modality: str, version: int,
              engine_options: dict) -> list[ItemRecord]:
    """Fresh points valid from ``version`` for items of one modality, projected from their
    stored raw embeddings against ``anchors``."""
    emb = np.stack([r.embedding for r in recs])
    sb = anchors.project(emb, modality, **engine_options)
    out = point_records(sb, [r.item for r in recs], modality, emb, [r.payload for r in recs],
                        version)
    if anchors.fold is not None:
        anchors.fold.fold_records(out)
    return out


def reproject_mixed(anchors: AnchorSet, recs: list[ItemRecord], version: int,
                    engine_options: dict) -> list[ItemRecord]:
    """:func:`reproject` for records of both modalities, in their order. Rows whose vector
    becomes all-zero are dropped (they were reported when first projected)."""
    out: dict[int, ItemRecord] = {}
    for mod in ("image", "text"):
        pos = [j for j, r in enumerate(recs) if r.modality == mod]
        if pos:
            for j, r in zip(pos, reproject(anchors, [recs[j] for j in pos], mod, version,
                                           engine_options)):
                out[j] = r
    return [out[j] for j in sorted(out) if out[j].sparse_indices.size]
