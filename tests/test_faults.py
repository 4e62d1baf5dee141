"""Fault injection: overlapping writers and updaters, readers during rewrites and garbage
collection, dead servers, damaged inputs. Every scenario ends with the stored state read
back and compared with the exact in-memory projection."""

import contextlib
import threading
import time

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.errors import (
    BackendUnavailableError,
    UpdateInProgressError,
    VersionRetiredError,
)
from connectors.index import Index
from connectors.updates import status, update_anchors
from connectors.versioning import Coordination
from tests.test_congruence import FakeEncoder
from tests.test_updates import DI, DT, assert_equals_rebuild, build, data

STORES = ["memory", "qdrant-edge", "milvus-lite", "qdrant-server", "milvus-server"]


def handle(idx, **timing):
    """A second handle on the same index: another process as far as the protocol goes (its
    own owner name, its own pinned version)."""
    return Index.open(idx.store, FakeEncoder("image", DI), FakeEncoder("text", DT),
                      timing=Coordination(**timing) if timing else Coordination())


def payloads(tag, n):
    return [AnchorPayload(f"{tag}{i}") for i in range(n)]


def assert_exact(idx, n_items):
    """The live state, read by a fresh handle, equals a rebuild (see test_updates)."""
    assert_equals_rebuild(handle(idx), n_items)


def late_records(writer, n=40, seed=20):
    img, _ = data(seed, n)
    recs, _ = writer.records(img, "image", [f"late{i}" for i in range(n)], [{"late": i} for i in range(n)])
    assert all(r.valid_from == writer.version for r in recs)
    return recs


# ------------------------------------------------------------------ 1. stale writes
@pytest.mark.parametrize("kind", STORES)
def test_batch_projected_before_an_update_is_reprojected(kind, tmp_path):
    """The overlap race, deterministic: an ingest projects its batch at V, another process
    flips the anchors to V+1, then the batch is written. It must land as V+1 vectors."""
    idx = build(kind, tmp_path)
    writer = handle(idx)
    recs = late_records(writer)
    update_anchors(idx, add=(*data(3, 12), payloads("n", 12)))
    assert writer.version == idx.version - 1  # the writer is behind
    new, _ = writer.write(recs)
    assert new == 40 and writer.version == idx.version
    assert_exact(idx, 340)


@pytest.mark.parametrize("kind", STORES)
def test_writer_stalled_past_its_lease_repairs_its_batch(kind, tmp_path):
    """The writer's lease lapses while it is stalled, an update runs to completion without
    it (its item pass cannot see the batch), then the stale batch lands: the writer's
    check after the write catches the move and rewrites the batch at the new version."""
    idx = build(kind, tmp_path)
    writer = handle(idx, writer_ttl=0.05)
    recs = late_records(writer)
    late = {r.item for r in recs}
    real = idx.store.upsert_items
    fired = []

    def stalled(batch):
        if not fired and any(r.item in late for r in batch):
            fired.append(1)
            time.sleep(0.15)  # the lease (0.05 s) lapses
            update_anchors(idx, add=(*data(3, 12), payloads("n", 12)))
        real(batch)

    idx.store.upsert_items = stalled
    try:
        writer.write(recs)
    finally:
        idx.store.upsert_items = real
    assert fired
    assert_exact(idx, 340)


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_update_waits_for_a_writer_in_the_middle_of_a_batch(kind, tmp_path):
    idx = build(kind, tmp_path)
    writer = handle(idx)
    recs = late_records(writer)
    late = {r.item for r in recs}
    real = idx.store.upsert_items
    entered, release = threading.Event(), threading.Event()

    def slow(batch):
        if any(r.item in late for r in batch) and not release.is_set():
            entered.set()
            release.wait(20)
        real(batch)

    idx.store.upsert_items = slow
    w = threading.Thread(target=writer.write, args=(recs,))
    w.start()
    assert entered.wait(20)
    v = idx.version
    result = {}
    u = threading.Thread(target=lambda: result.update(
        r=update_anchors(idx, add=(*data(3, 12), payloads("n", 12)))))
    u.start()
    time.sleep(0.5)
    assert idx.store.read_manifest().version == v, "the update flipped under a live writer"
    assert status(idx.store)["pending_update"]["state"] == "running"
    release.set()
    w.join(30)
    u.join(60)
    idx.store.upsert_items = real
    assert result["r"].writers_waited == 1 and result["r"].version == v + 1
    assert_exact(idx, 340)


@pytest.mark.parametrize("kind", ["memory", "milvus-lite"])
def test_one_updater_at_a_time_and_resume_after_a_crash(kind, tmp_path):
    idx = build(kind, tmp_path)
    other = handle(idx)
    real = idx.store.set_valid_to
    entered, release = threading.Event(), threading.Event()

    def slow(ids, version):
        entered.set()
        release.wait(20)
        real(ids, version)

    idx.store.set_valid_to = slow
    errors = []

    def first():
        try:
            update_anchors(idx, add=(*data(3, 12), payloads("n", 12)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert entered.wait(20)
    with pytest.raises(UpdateInProgressError, match="running"):
        update_anchors(other, add=(*data(4, 5), payloads("m", 5)))
    with pytest.raises(UpdateInProgressError):
        update_anchors(other)  # 'anchors status --resume' must not start a second updater
    release.set()
    t.join(60)
    idx.store.set_valid_to = real
    assert not errors
    assert status(idx.store)["pending_update"] is None
    # a crash mid-pass leaves an interrupted journal; a resume from another handle finishes it
    with pytest.raises(KeyboardInterrupt):
        update_anchors(idx, add=(*data(5, 7), payloads("c", 7)), batch=64, _fail_after_batches=2)
    st = status(idx.store)["pending_update"]
    assert st["state"] == "interrupted" and st["adds"] == 7
    res = update_anchors(other, add=(*data(5, 7), payloads("c", 7)))
    assert res.resumed
    assert_exact(idx, 300)


# ----------------------------------------------------- 2. readers during rewrites
def _ids(hits):
    return [h.id for h in hits]


@pytest.mark.parametrize("kind", ["milvus-lite", "milvus-server"])
def test_milvus_readers_never_miss_an_item_while_it_is_rewritten(kind, tmp_path):
    """Re-upserting the same items (a re-ingest) while searching: every search returns the
    same top-20. Milvus applies an upsert as delete + insert; the store must hide that."""
    idx = build(kind, tmp_path)
    reader = handle(idx)
    q = reader.project(data(9, 1)[1], "text")
    expected = _ids(reader.search_vectors(q, 20)[0])
    top = [r for b in idx.store.scroll_items(version=idx.version) for r in b if r.item in set(expected)]
    stop = threading.Event()
    rewrites = []

    def rewrite():
        writer = handle(idx)
        while not stop.is_set():
            writer.write([r for r in top])
            rewrites.append(1)

    t = threading.Thread(target=rewrite)
    t.start()
    misses = 0
    searches = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        got = _ids(reader.search_vectors(q, 20)[0])
        searches += 1
        misses += sorted(got) != sorted(expected)
    stop.set()
    t.join(30)
    assert len(rewrites) > 10 and searches > 50
    assert misses == 0, f"{misses} of {searches} searches missed an item during rewrites"
    assert_exact(idx, 300)


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_pinned_reader_sees_one_version_during_an_update(kind, tmp_path):
    idx = build(kind, tmp_path)
    reader = handle(idx)
    q = reader.project(data(9, 1)[1], "text")
    before = [(h.id, round(h.score, 5)) for h in reader.search_vectors(q, 20)[0]]
    done = threading.Event()
    t = threading.Thread(target=lambda: (update_anchors(idx, add=(*data(3, 40), payloads("n", 40)),
                                                        batch=32), done.set()))
    t.start()
    bad = n = 0
    while not done.is_set() and n < 2000:
        n += 1
        bad += [(h.id, round(h.score, 5)) for h in reader.search_vectors(q, 20)[0]] != before
    t.join(60)
    assert n > 0 and bad == 0, f"{bad} of {n} reads saw a mix of versions"
    assert [(h.id, round(h.score, 5)) for h in reader.search_vectors(q, 20)[0]] == before


# ---------------------------------------------------------- 3. retired versions
@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_pinned_reader_keeps_its_version_until_it_lets_go(kind, tmp_path):
    idx = build(kind, tmp_path)
    reader = handle(idx)
    q = reader.project(data(9, 1)[1], "text")
    before = [(h.id, round(h.score, 5)) for h in reader.search_vectors(q, 20)[0]]
    for seed in (3, 4, 5):  # each update garbage-collects what no reader holds
        update_anchors(idx, add=(*data(seed, 15), payloads(f"s{seed}", 15)))
        assert [(h.id, round(h.score, 5)) for h in reader.search_vectors(q, 20)[0]] == before
    reader.close()  # lets go of its version
    update_anchors(idx, add=(*data(6, 5), payloads("z", 5)))
    with pytest.raises(VersionRetiredError, match=f"version {reader.version} .* retired.*refresh"):
        reader.search_vectors(q, 20)
    reader.refresh()
    assert len(reader.search_vectors(q, 20)[0]) == 20
    assert_exact(idx, 300)


def test_reader_whose_lease_lapsed_gets_an_error_not_an_empty_result(tmp_path):
    idx = build("memory", tmp_path)
    reader = handle(idx, reader_ttl=0.2)
    q = reader.project(data(9, 1)[1], "text")
    assert len(reader.search_vectors(q, 20)[0]) == 20
    time.sleep(0.3)  # idle past its lease
    update_anchors(idx, add=(*data(3, 15), payloads("a", 15)))
    update_anchors(idx, add=(*data(4, 15), payloads("b", 15)))  # GC of the old version
    with pytest.raises(VersionRetiredError):
        reader.search_vectors(q, 20)


@contextlib.contextmanager
def searching(reader, q, threads: int):
    """Threads searching ``reader`` (10 hits each time) until the block ends; yields the
    list their first errors land in."""
    errors, done = [], threading.Event()

    def search():
        while not done.is_set():
            try:
                assert len(reader.search_vectors(q, 10)[0]) == 10
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return

    pool = [threading.Thread(target=search) for _ in range(threads)]
    for t in pool:
        t.start()
    try:
        yield errors
    finally:
        done.set()
        for t in pool:
            t.join(30)


def test_qdrant_embedded_search_in_a_thread_beside_an_update(tmp_path):
    idx = build("qdrant-edge", tmp_path)
    reader = handle(idx)
    q = reader.project(data(9, 1)[1], "text")
    with searching(reader, q, threads=1) as errors:
        update_anchors(idx, add=(*data(3, 30), payloads("n", 30)), batch=32)
    assert not errors, errors[0]


def test_qdrant_edge_reopens_optimized_shards_under_searches(tmp_path, monkeypatch):
    """Writes that trigger optimize() close and reload the items shard (what keeps the
    engine's heap flat); searches running meanwhile never see a closed shard, and find every
    item written."""
    from connectors.qdrant_edge import QdrantEdgeStore

    monkeypatch.setattr(QdrantEdgeStore, "OPTIMIZE_EVERY", 30)
    opened = []
    real_call = QdrantEdgeStore._call
    monkeypatch.setattr(QdrantEdgeStore, "_call", lambda self, what, *a: (
        opened.append(what) if what.startswith("open ") else None) or real_call(self, what, *a))
    idx = build("qdrant-edge", tmp_path)
    reader = handle(idx)
    q = reader.project(data(9, 1)[1], "text")
    idx.store.count_items()  # load the shard build() left closed after its last optimize
    before = opened.count(f"open {idx.store.items}")
    with searching(reader, q, threads=3) as errors:
        for seed in range(4):  # 4 writes of 40 items: each passes OPTIMIZE_EVERY
            img, _ = data(40 + seed, 40)
            idx.write(idx.records(img, "image", [f"more{seed}-{i}" for i in range(40)],
                                  [{} for _ in range(40)])[0])
    assert not errors, errors[0]
    assert opened.count(f"open {idx.store.items}") - before == 4  # reloaded after each
    assert idx.store.count_items(version=idx.version) == 300 + 160
    assert_exact(idx, 300 + 160)


# ------------------------------------------------------------- 4. dead servers
def test_dead_milvus_server_fails_within_the_configured_bound(tmp_path):
    pytest.importorskip("milvus_lite")
    from connectors.milvus import MilvusStore
    from connectors.servers import MilvusLiteServer, free_port

    t0 = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:\d+.*server is running"):
        MilvusStore("x", uri=f"http://127.0.0.1:{free_port()}", connect_timeout=1, timeout=1,
                    retry_budget=2)
    assert time.monotonic() - t0 < 15, "connecting to a dead address must fail within the bound"

    server = MilvusLiteServer(tmp_path / "dead.db").start()
    try:
        idx = build("memory", tmp_path)  # the data, then copied to the server
        store = MilvusStore("dead", uri=server.uri, timeout=1, retry_budget=2)
        live = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=30)
        live.add_anchor_embeddings(idx.anchors.image, idx.anchors.text, list(idx.anchors.payloads))
        server.kill()
        for call in (lambda: store.count_items(), lambda: live.write(late_records(live, 5)),
                     lambda: store.search(np.array([1]), np.array([1.0], np.float32), 5)):
            t0 = time.monotonic()
            with pytest.raises(BackendUnavailableError, match=server.uri.split("//")[1]):
                call()
            assert time.monotonic() - t0 < 15
        server.start()  # and then it resumes
        store2 = MilvusStore("dead", uri=server.uri, timeout=5)
        again = Index.open(store2, FakeEncoder("image", DI), FakeEncoder("text", DT))
        again.write(late_records(again, 5))
        assert store2.count_items(version=again.version) == 5
    finally:
        server.kill()


def test_dead_qdrant_server_fails_within_the_configured_bound():
    pytest.importorskip("qdrant_client")
    from connectors.qdrant import QdrantStore
    from connectors.servers import free_port

    t0 = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:\d+.*server is running"):
        QdrantStore("x", url=f"http://127.0.0.1:{free_port()}", timeout=1, retry_budget=2)
    assert time.monotonic() - t0 < 15


@pytest.mark.slow
def test_milvus_lite_keeps_every_row_once_segments_seal(tmp_path):
    """Past ~40,000 rows of 800 non-zeros, milvus-lite seals segments; a delete by
    `id in [...] and pk not in [...]` then also removed the rows just inserted (59% of 10^5
    rows were lost). Inserts, rewrites and closes past that point must keep every row once."""
    pytest.importorskip("milvus_lite")
    from asif_index.anchors import AnchorManifest
    from connectors.base import ItemRecord, item_id, point_id
    from connectors.milvus import MilvusStore

    store = MilvusStore("seal", uri=str(tmp_path / "seal.db"), timeout=300)
    store.create(AnchorManifest("a", "b", 8, 8))
    rng = np.random.default_rng(0)

    def recs(lo, hi):
        out = []
        for j in range(lo, hi):
            it = item_id("text", str(j))
            idx = np.sort(rng.choice(30000, 800, replace=False))
            out.append(ItemRecord(point_id(it, 0), it, "text", idx,
                                  rng.random(800).astype(np.float32),
                                  rng.random(8).astype(np.float32), 0.1, 0))
        return out

    n = 45 * 1024
    first = []
    for s in range(0, n, 2048):
        batch = recs(s, min(n, s + 2048))
        first += batch[:2] if s < 8192 else []
        store.upsert_items(batch)
    assert store.count_items() == n
    store.upsert_items(recs(0, 4096))  # rewrite (same point ids) after sealing
    store.set_valid_to([r.id for r in first], 1)
    assert store.count_items() == n
    assert store.count_items(version=0) == n and store.count_items(version=1) == n - len(first)
    ids = [r.id for b in store.scroll_items(4096) for r in b]
    assert len(ids) == len(set(ids)) == n
