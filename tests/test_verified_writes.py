"""Writes are read back before anything depends on them. A database that acknowledges a
write it drops (milvus-lite on a full disk does) makes the update or ingest fail loudly;
the live version stays complete, and once space returns the same call resumes exactly."""

import os
import subprocess
import uuid

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.errors import StorageError
from connectors.updates import status, update_anchors
from tests.test_updates import assert_equals_rebuild, build, data


class Dropping:
    """Wraps a real store: after ``budget`` more item rows it silently drops inserts while
    reporting success, as milvus-lite did on a full disk."""

    def __init__(self, store, budget):
        self._store, self.budget = store, budget

    def __getattr__(self, name):
        return getattr(self._store, name)

    def upsert_items(self, items):
        keep = items[:max(0, self.budget)]
        self.budget -= len(items)
        self._store.upsert_items(keep)  # the rest vanish; no error

    # the verified-write helpers of the base class, bound to this wrapper
    from connectors.base import VectorStore as _V

    write_items = _V.write_items
    close_items = _V.close_items
    _lost = _V._lost
    _read_back = _V._read_back
    READ_BACK_S = 0.2


def visible_items(idx):
    return {r.item: r for b in idx.store.scroll_items(version=idx.version) for r in b}


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_an_update_whose_writes_vanish_fails_and_resumes_exact(kind, tmp_path):
    idx = build(kind, tmp_path)
    real = idx.store
    before = visible_items(idx)
    v0 = idx.version
    idx.store = Dropping(real, budget=40)
    new = data(3, 40)
    with pytest.raises(StorageError, match=r"acknowledged .* not stored .*free disk space"):
        update_anchors(idx, add=(*new, [AnchorPayload(f"n{i}") for i in range(40)]))
    idx.store = real
    # version V whole: the same items, the same vectors
    assert real.read_manifest().version == v0
    idx.refresh()
    after = visible_items(idx)
    assert after.keys() == before.keys()
    for k, r in before.items():
        np.testing.assert_array_equal(after[k].sparse_indices, r.sparse_indices)
    assert status(real)["pending_update"]["state"] == "interrupted"
    # space is back: the same call resumes from the journal and converges exactly
    res = update_anchors(idx, add=(*new, [AnchorPayload(f"n{i}") for i in range(40)]))
    assert res.resumed and idx.version == v0 + 1
    assert_equals_rebuild(idx)


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_an_ingest_batch_that_vanishes_is_not_checkpointed(kind, tmp_path):
    from connectors.pipeline import ingest_items

    idx = build(kind, tmp_path)
    real = idx.store
    img, _ = data(9, 60)
    idx.encoders["image"] = _Embeds(dict((f"k{i}", img[i]) for i in range(60)))
    ck = tmp_path / "ck.json"
    from connectors.pipeline.readers import SourceItem

    items = [SourceItem(f"k{i}", image=f"k{i}", payload={"n": i}) for i in range(60)]
    idx.store = Dropping(real, budget=25)
    with pytest.raises(StorageError):
        ingest_items(idx, items, "image", batch_size=20, checkpoint=ck, progress=False)
    idx.store = real
    n_mid = real.count_items(version=idx.version)
    assert 320 <= n_mid < 340  # batch 1 stored; batch 2 partly (5 rows), and not checkpointed
    s = ingest_items(idx, items, "image", batch_size=20, checkpoint=ck, progress=False)
    assert real.count_items(version=idx.version) == 360
    assert s.resumed_at == 20


from asif_index.encoders.base import Encoder  # noqa: E402


class _Embeds(Encoder):
    """An image 'encoder' over named rows: the ingest path without decoding."""

    modality, dim, name = "image", 24, "fake-image-24"

    def __init__(self, rows):
        super().__init__(device="cpu", decode_workers=0)
        self.rows = rows

    def _prepare(self, item, label):
        return self.rows[item]

    def _forward(self, prepared):
        return np.stack(prepared).astype(np.float32)

    def content_key(self, item):
        return item


def small_disk(tmp_path, size_mb):
    """A tmpfs of ``size_mb`` (root only) and a function that fills it to ``free_mb`` MB free."""
    mnt = tmp_path / f"disk{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}M", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()[:80]})")

    def fill(free_mb: float):
        import shutil

        f = mnt / "filler"
        have = shutil.disk_usage(mnt).free
        n = max(0, int(have - free_mb * 2**20))
        with open(f, "ab") as out:
            out.write(b"\0" * n)
        return f

    yield mnt, fill
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def nearly_full_disk(tmp_path):
    yield from small_disk(tmp_path, 40)


@pytest.fixture
def edge_disk(tmp_path):
    yield from small_disk(tmp_path, 700)


def test_qdrant_edge_update_on_a_filling_disk_is_refused_and_resumes(edge_disk):
    """Qdrant Edge would crash (SIGBUS) on a full disk, so the store refuses a write below
    its free-space floor: the update stops with the path and the fix, version V stays
    whole, and the same call resumes once space is back."""
    pytest.importorskip("qdrant_edge")
    from asif_index.errors import BackendError
    from connectors.index import Index
    from connectors.qdrant_edge import QdrantEdgeStore
    from tests.test_congruence import FakeEncoder
    from tests.test_updates import DI, DT, K

    mnt, fill = edge_disk
    store = QdrantEdgeStore("e", path=str(mnt / "q"))
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K)
    ai, at = data(1, 120)
    idx.add_anchor_embeddings(ai, at, [AnchorPayload(f"a{i}") for i in range(120)])
    ii, it = data(2, 300)
    for mod, emb in (("image", ii[:150]), ("text", it[150:])):
        recs, _ = idx.records(emb, mod, [f"{mod}{i}" for i in range(150)], [{}] * 150)
        idx.write(recs)
    before = visible_items(idx)
    filler = fill(200)  # under the 256 MB floor
    new = (*data(3, 12), [AnchorPayload("n")] * 12)
    with pytest.raises(BackendError, match=r"MB free on the disk of .*free some space"):
        update_anchors(idx, add=new)
    assert store.read_manifest().version == idx.version
    assert visible_items(idx).keys() == before.keys()
    filler.unlink()
    res = update_anchors(idx, add=new)
    assert res.version == store.read_manifest().version
    assert_equals_rebuild(idx)


def test_milvus_lite_server_on_a_full_disk_loses_nothing(nearly_full_disk):
    """The attack's case: a milvus-lite server whose disk fills during 'anchors add', with
    real-sized image items (1,280-d raw embeddings): the new anchors fit, their items do not."""
    pytest.importorskip("milvus_lite")
    from connectors.index import Index
    from connectors.milvus import MilvusStore
    from connectors.servers import MilvusLiteServer
    from tests.test_congruence import FakeEncoder

    di, dt = 1280, 16
    rng = np.random.default_rng(0)

    def rows(n, d):
        return rng.standard_normal((n, d)).astype(np.float32)

    mnt, fill = nearly_full_disk
    encs = FakeEncoder("image", di), FakeEncoder("text", dt)
    with MilvusLiteServer(mnt / "srv.db") as server:  # __enter__ starts it
        pid = server.proc.pid
        idx = Index.create(MilvusStore("full", uri=server.uri, retry_budget=5), *encs, k=30)
        idx.add_anchor_embeddings(rows(120, di), rows(120, dt), [AnchorPayload("a")] * 120)
        recs, _ = idx.records(rows(300, di), "image", [f"i{i}" for i in range(300)], [{}] * 300)
        idx.write(recs)
        before = visible_items(idx)
        filler = fill(1.3)
        new = (rows(30, di), rows(30, dt), [AnchorPayload("n")] * 30)
        with pytest.raises(Exception) as caught:  # noqa: PT011 - the kind is checked below
            update_anchors(idx, add=new)
        err = caught.value
        print("disk-full update:", type(err).__name__, str(err)[:400])
        assert "\n" not in str(err) and type(err).__name__ in (
            "StorageError", "BackendError", "BackendUnavailableError"), err
        filler.unlink()
        idx2 = Index.open(MilvusStore("full", uri=server.uri), *encs)
        assert idx2.version == idx.version and visible_items(idx2).keys() == before.keys()
        res = update_anchors(idx2, add=new)  # space is back: resumes, exact
        assert res.resumed and idx2.version == idx.version + 1
        assert_equals_rebuild(idx2, 300)
    with pytest.raises(ProcessLookupError):  # the server is gone with the test
        os.kill(pid, 0)
