"""Bad inputs that reach an engine: an index written by another version, a folder or file
that is no index, a full disk. Each is one clear error naming the path and the fix, and
whatever was stored stays as it was."""

import shutil
import subprocess
import uuid

import pytest

from asif_index.errors import AsifError, BackendError, CollectionError
from connectors.index import Index
from tests.stores import make_store
from tests.test_congruence import FakeEncoder
from tests.test_updates import DI, DT, build, data

ENGINES = ["qdrant-edge", "milvus-lite"]


def enc():
    return FakeEncoder("image", DI), FakeEncoder("text", DT)


@pytest.mark.parametrize("kind", ENGINES)
def test_index_from_another_version_is_refused_untouched(kind, tmp_path):
    idx = build(kind, tmp_path)
    doc = idx.store.get_doc("manifest")
    doc["extra"]["storage"] = 99
    idx.store.put_doc("manifest", doc)
    n = idx.store.count_items()
    with pytest.raises(CollectionError, match=r"another version of asif-index .*storage format 99"):
        Index.open(idx.store, *enc())
    doc["extra"]["storage"], doc["surprise"] = idx.store.storage_version, 1
    idx.store.put_doc("manifest", doc)
    with pytest.raises(CollectionError, match="cannot read"):
        Index.open(idx.store, *enc())
    assert idx.store.count_items() == n


def test_qdrant_folder_that_is_not_an_index(tmp_path):
    pytest.importorskip("qdrant_edge")
    from asif_index.config import AsifSettings
    from connectors import open_store

    junk = tmp_path / "junk"
    (junk / "asif_registry_meta").mkdir(parents=True)
    (junk / "asif_registry_meta" / "notes.txt").write_text("not a shard")
    with pytest.raises(AsifError, match=str(junk)):
        store = open_store(AsifSettings.load(backend="qdrant", path=junk), must_exist=True)
        store.read_manifest()
    assert (junk / "asif_registry_meta" / "notes.txt").read_text() == "not a shard"
    with pytest.raises(AsifError, match="no qdrant database at"):
        open_store(AsifSettings.load(backend="qdrant", path=tmp_path / "typo"), must_exist=True)
    assert not (tmp_path / "typo").exists()


def test_milvus_file_that_is_not_a_database(tmp_path):
    pytest.importorskip("milvus_lite")
    from connectors.milvus import MilvusStore

    f = tmp_path / "notes.db"
    f.write_text("plain text, not Milvus Lite")
    with pytest.raises(AsifError, match="notes.db"):
        MilvusStore("x", uri=str(f), connect_timeout=5, retry_budget=2).exists()
    assert f.read_text() == "plain text, not Milvus Lite"


@pytest.fixture
def small_disk(tmp_path):
    """A 96 MB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / f"disk{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96M", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()[:80]})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_qdrant_edge_refuses_a_full_disk_instead_of_crashing(small_disk):
    """Qdrant Edge writes through preallocated memory maps: a full disk would be a SIGBUS.
    The store checks free space first; the refusal names the path and leaves data intact."""
    pytest.importorskip("qdrant_edge")
    from connectors.qdrant_edge import QdrantEdgeStore

    store = QdrantEdgeStore("full", path=str(small_disk / "q"))
    with pytest.raises(BackendError, match=r"MB free on the disk of .*choose another --path"):
        Index.create(store, *enc(), k=30)
    assert not any((small_disk / "q").glob("*/segments")) if (small_disk / "q").exists() else True


def test_milvus_lite_keeps_what_it_stored_when_the_disk_fills(small_disk):
    pytest.importorskip("milvus_lite")
    from asif_index.anchors import AnchorPayload
    from connectors.milvus import MilvusStore

    store = MilvusStore("full", uri=str(small_disk / "m.db"))
    idx = Index.create(store, *enc(), k=30)
    ai, at = data(1, 120)
    idx.add_anchor_embeddings(ai, at, [AnchorPayload("a")] * 120)
    img, _ = data(2, 200)
    recs, _ = idx.records(img, "image", [f"x{i}" for i in range(200)], [{}] * 200)
    idx.write(recs)
    filler = small_disk / "fill"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=200"],
                   capture_output=True)
    more, _ = data(3, 500)
    recs2, _ = idx.records(more, "image", [f"y{i}" for i in range(500)], [{}] * 500)
    try:
        idx.write(recs2)
    except AsifError as exc:  # a clear error is fine too; losing the first 200 is not
        assert "m.db" in str(exc)
    filler.unlink()
    store.close()
    again = MilvusStore("full", uri=str(small_disk / "m.db"))
    assert again.count_items() >= 200
    got = {r.item for b in again.scroll_items() for r in b}
    assert {r.item for r in recs} <= got
    again.close()
    shutil.rmtree(small_disk / "m.db", ignore_errors=True)


def test_qdrant_edge_optimizes_as_it_goes_and_stays_exact(tmp_path, monkeypatch):
    """Edge has no background optimizer: the store optimizes every ``optimize_every`` items
    written (bounding the RAM of the appendable segment), and what it serves stays exact."""
    pytest.importorskip("qdrant_edge")
    from connectors.qdrant_edge import QdrantEdgeStore
    from tests.test_updates import assert_equals_rebuild

    monkeypatch.setattr(QdrantEdgeStore, "OPTIMIZE_EVERY", 100)
    calls = []
    real = QdrantEdgeStore.optimize
    monkeypatch.setattr(QdrantEdgeStore, "optimize",
                        lambda self: calls.append(self._written) or real(self))
    idx = build("qdrant-edge", tmp_path)  # 300 items in two writes of 150
    assert len(calls) == 2, calls
    assert_equals_rebuild(idx)
    q = idx.project(data(5, 1)[1], "text")
    hits = idx.search_vectors(q, 5)[0]
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
