"""Past one machine on Ray: anchors sharded across actors give the same relative vectors as one
engine; a distributed ingest writes what the single-process one writes, survives a killed
worker and resumes after a killed driver. Ray runs locally here (a head on loopback, small
object store); skipped without the [ray] extra."""

import numpy as np
import pytest

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.errors import AnchorError, ConfigError, ShapeError

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")


@pytest.fixture(scope="module")
def local_ray():
    # Ray waits a fixed 30 s for its raylet; on 2 cores shared with another test worker that
    # can run out (seen in CI), so a start is tried three times before it counts as failed
    for attempt in range(3):
        try:
            # logical CPUs beyond the 2 real ones: a distributed ingest holds an encode actor
            # per modality and a project actor while its read and write tasks run
            ray.init(num_cpus=6, include_dashboard=False, object_store_memory=100 * 2**20,
                     log_to_driver=False, configure_logging=False)
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception here
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
    yield ray
    ray.shutdown()


def anchor_set(n=2000, d_i=48, d_t=24, seed=0):
    rng = np.random.default_rng(seed)
    a = AnchorSet(AnchorManifest("i", "t", d_i, d_t, k=40, p=6.0))
    img = rng.standard_normal((n, d_i)).astype(np.float32)
    if n > 7:
        img[7] = img[3]  # exact ties: the lower row must win in every shard layout
    a.add(img, rng.standard_normal((n, d_t)).astype(np.float32),
          [AnchorPayload(f"c{i}") for i in range(n)])
    return a, rng


def test_sharded_projection_equals_one_engine(local_ray):
    """Three shards (each actor its own process and engine) against one engine: the same ids in
    the same order, ties to the lowest row, k beyond a shard's size, ids with a gap."""
    from connectors.distributed.sharded import ShardedProjector

    anchors, rng = anchor_set()
    anchors.remove(np.arange(100, 160))  # ids with a gap, as after live removals
    q = rng.standard_normal((37, 48)).astype(np.float32)
    q[0] = anchors.matrix("image")[3]  # a query that ties anchors 3 and 7 exactly
    one = anchors.project(q, "image")
    sp = ShardedProjector(anchors, "image", 3)
    try:
        many = sp.project(q)
        assert np.array_equal(many.indices, one.indices)
        assert np.allclose(many.values, one.values, atol=1e-6)
        assert np.allclose(many.kth_similarity, one.kth_similarity, atol=1e-6)
        assert many.indices[0, 0] == 3 and 7 in many.indices[0, :2]
        info = sp.info()
        assert [i["rows"] for i in info] == [646, 647, 647] and info[1]["first_row"] == 646
        # k beyond a shard's size still merges exactly
        assert np.array_equal(sp.project(q, k=900, p=2).indices,
                              anchors.project(q, "image", 900, 2).indices)
        with pytest.raises(ShapeError, match=r"\[B, 48\]"):
            sp.project(q[:, :10])
    finally:
        sp.close()


def test_sharding_refuses_what_cannot_work(local_ray):
    from connectors.distributed.sharded import ShardedProjector

    anchors, _ = anchor_set(n=5)
    with pytest.raises(AnchorError, match="cannot fill"):
        ShardedProjector(anchors, "image", 6)
    with pytest.raises(ConfigError, match="shards"):
        ShardedProjector(anchors, "image", 0)


# ------------------------------------------------------------------ distributed ingestion
@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A captions table beside 120 distinct drawings, one corrupt file and one missing."""
    from tests.test_pipeline import COLORS, SHAPES, draw

    root = tmp_path_factory.mktemp("dist")
    (root / "img").mkdir()
    rows, n = ["image\tcaption"], 0
    for rep in range(10):
        for color in COLORS:
            for shape in SHAPES:
                draw(color, shape, 1000 + n).save(root / "img" / f"{n:03d}.png")
                rows.append(f"{n:03d}.png\ta {color} {shape} number {rep}")
                n += 1
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG broken")
    rows += ["corrupt.png\ta broken picture", "missing.png\ta picture that is not there"]
    (root / "captions.tsv").write_text("\n".join(rows) + "\n")
    return root


def source(root, n=None):
    from connectors.pipeline import read_captions_table

    return list(read_captions_table(root / "captions.tsv", root / "img"))[:n]


def build_index(settings, encoders, root):
    """An index with 24 anchors from the first drawings (closed again: the driver lets go)."""
    from connectors import close_embedded, open_store
    from connectors.index import Index
    from connectors.pipeline import ingest_anchors

    idx = Index.create(open_store(settings), *encoders, k=20, p=8.0)
    ingest_anchors(idx, source(root)[:48:2], batch_size=12, progress=False)
    idx.close()
    close_embedded()
    return idx


def reference(encoders, root, modality, src):
    """The single-process ingest of the same source into memory: {point id: record}."""
    from connectors.index import Index
    from connectors.memory import MemoryStore
    from connectors.pipeline import ingest_anchors, ingest_items

    idx = Index.create(MemoryStore("ref"), *encoders, k=20, p=8.0)
    ingest_anchors(idx, source(root)[:48:2], batch_size=12, progress=False)
    ingest_items(idx, src, modality, batch_size=16, progress=False)
    return {r.id: r for batch in idx.store.scroll_items() for r in batch}


def stored(settings):
    from connectors import close_embedded, open_store

    store = open_store(settings, must_exist=True)
    out = {r.id: r for batch in store.scroll_items() for r in batch}
    close_embedded()
    return out


def assert_same(got, want):
    """Same points, vectors and raw embeddings; the same payloads (every item here has one
    source row per content, so no payload is a matter of write order)."""
    assert got.keys() == want.keys(), (len(got), len(want))
    for k, r in want.items():
        np.testing.assert_array_equal(got[k].sparse_indices, r.sparse_indices)
        # a model's output moves at float32 rounding (1e-7) with its batch's make-up, which
        # differs between the two pipelines; p = 8 multiplies that in the relative vector
        np.testing.assert_allclose(got[k].sparse_values, r.sparse_values, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got[k].embedding, r.embedding, rtol=1e-4, atol=1e-6)
        assert got[k].payload == r.payload and got[k].valid_from == r.valid_from


def settings_for(kind, tmp_path, server=None):
    from asif_index.config import AsifSettings

    common = dict(collection="dist", cache_dir=str(tmp_path / "cache"))
    if kind == "qdrant-embedded":
        pytest.importorskip("qdrant_edge")
        return AsifSettings(backend="qdrant", path=str(tmp_path / "edge"), **common)
    return AsifSettings(backend="milvus", url=server.uri, **common)


@pytest.fixture()
def milvus_server(tmp_path):
    pytest.importorskip("milvus_lite")
    from connectors.servers import MilvusLiteServer

    server = MilvusLiteServer(tmp_path / "srv.db").start()
    yield server
    server.kill()


@pytest.mark.parametrize("kind", ["qdrant-embedded", "milvus-server"])
def test_distributed_ingest_equals_single_process(local_ray, kind, pictures, encoders,
                                                  tmp_path, request):
    """Both modalities through decode tasks, encode/project actors and the writer actors:
    the same ids, vectors and payloads as the single-process ingest; the corrupt and the
    missing image reported; a rerun with another block size skips everything."""
    from connectors.distributed.ingest import RayIngestOptions, ingest_on_ray

    server = request.getfixturevalue("milvus_server") if kind == "milvus-server" else None
    settings = settings_for(kind, tmp_path, server)
    build_index(settings, encoders, pictures)
    src = source(pictures, 40) + source(pictures)[-2:]  # 40 drawings, the corrupt, the missing
    want = reference(encoders, pictures, "both", src)
    s = ingest_on_ray(settings, src, "both", RayIngestOptions(batch_size=8, writers=None),
                      source_name="pictures", progress=False)
    assert s.source_items == 42 and s.ingested == 40 + 42 and s.updated == 0, s.report()
    assert sorted(k.split("|")[0] for k, _ in s.skipped) == ["corrupt.png", "missing.png"]
    assert any("cannot be decoded" in r for _, r in s.skipped)
    assert_same(stored(settings), want)
    again = ingest_on_ray(settings, src, "both", RayIngestOptions(batch_size=5),
                          source_name="pictures", progress=False)
    assert again.resumed_at == 42 and again.ingested == again.updated == 0, again.report()


def test_webdataset_shards_read_on_workers(local_ray, tmp_path, pictures, encoders):
    """WebDataset shards, one read task each: the same items as the single-process ingest of
    the same shards, a corrupt member reported, an empty source a no-op."""
    import io

    from PIL import Image

    from connectors.distributed.ingest import RayIngestOptions, ingest_on_ray
    from connectors.pipeline import read_webdataset
    from connectors.pipeline.readers import write_webdataset

    shards = []
    for n in range(2):
        samples = []
        for i in range(6):
            buf = io.BytesIO()
            Image.open(pictures / "img" / f"{n * 6 + i:03d}.png").convert("RGB").save(
                buf, format="JPEG")
            samples.append((f"s{n}-{i}", buf.getvalue(), f"picture {n * 6 + i}"))
        samples.append((f"s{n}-bad", b"not a jpeg", "a broken one"))
        shards.append(write_webdataset(tmp_path / f"{n:05d}.tar", samples))
    settings = settings_for("qdrant-embedded", tmp_path)
    build_index(settings, encoders, pictures)
    s = ingest_on_ray(settings, None, "both", RayIngestOptions(batch_size=4),
                      source_name="wds", webdataset=[str(x) for x in shards], progress=False)
    # 12 photos, 12 captions and "a broken one" (one text item, in both shards)
    assert s.ingested == 12 + 13 and len(s.skipped) == 2, s.report()
    assert_same(stored(settings), reference(encoders, pictures, "both",
                                            list(read_webdataset(shards))))
    assert ingest_on_ray(settings, [], "image").source_items == 0


def test_ingest_refuses_what_cannot_work(local_ray, tmp_path, pictures, encoders):
    from asif_index.config import AsifSettings
    from asif_index.errors import ConfigError
    from connectors.distributed.ingest import RayIngestOptions, ingest_on_ray

    settings = settings_for("qdrant-embedded", tmp_path)
    build_index(settings, encoders, pictures)
    with pytest.raises(ConfigError, match="one writer"):
        ingest_on_ray(settings, source(pictures, 4), "image", RayIngestOptions(writers=2))
    with pytest.raises(ConfigError, match="one of them"):
        ingest_on_ray(settings, None, "image")
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RayIngestOptions(encoders=0)
    wrong = AsifSettings(**{**settings.model_dump(), "text_encoder": "hf:/nonexistent"})
    with pytest.raises(ConfigError):
        ingest_on_ray(wrong, source(pictures, 4), "text", progress=False)


def worker_pids(name):
    """PIDs of the Ray worker processes whose title names ``name`` (an actor's class)."""
    from pathlib import Path

    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if name.encode() in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:  # the process ended meanwhile
            pass
    return out


def test_killed_worker_loses_nothing(local_ray, tmp_path, pictures, encoders, milvus_server):
    """An encode actor is SIGKILLed mid-run: Ray restarts it and retries its blocks; the
    ingest completes with every item once, equal to the single-process ingest."""
    import os
    import signal
    import threading
    import time

    from connectors.distributed.ingest import RayIngestOptions, checkpoint_dir, ingest_on_ray

    settings = settings_for("milvus-server", tmp_path, milvus_server)
    build_index(settings, encoders, pictures)
    src = source(pictures, 120)
    opts = RayIngestOptions(batch_size=4)
    ck = checkpoint_dir(settings, opts, "pictures", settings.collection, "image")
    result, killed = {}, []
    run = threading.Thread(target=lambda: result.update(s=ingest_on_ray(
        settings, src, "image", opts, source_name="pictures", progress=False)))
    run.start()
    deadline = time.time() + 240
    while run.is_alive() and time.time() < deadline and not killed:
        if ck.is_dir() and any(ck.glob("*.parquet")):  # blocks are landing: mid-run
            for pid in worker_pids("EncodeActor"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)
    run.join(300)
    assert killed, "the run ended before an encode actor could be killed; give it more rows"
    s = result["s"]
    assert s.ingested + s.updated == 120 and s.ingested == 120, s.report()
    assert_same(stored(settings), reference(encoders, pictures, "image", src))


DRIVER = """
import sys
sys.path.insert(0, {root!r})
import ray
from asif_index.config import AsifSettings
from connectors.distributed.ingest import RayIngestOptions, ingest_on_ray
from connectors.pipeline import read_captions_table
ray.init(address={address!r}, log_to_driver=False, configure_logging=False)
src = list(read_captions_table({table!r}, {images!r}))[:120]
ingest_on_ray(AsifSettings(**{settings!r}), src, "image", RayIngestOptions(batch_size=4),
              source_name="pictures", progress=False)
"""


def test_killed_driver_resumes_and_converges(local_ray, tmp_path, pictures, encoders,
                                             milvus_server):
    """The driver (its own process, on the running cluster) is SIGKILLed after some blocks
    landed; a new driver resumes from the checkpoint and the index equals the single-process
    ingest, nothing lost, nothing duplicated."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from connectors.distributed.ingest import RayIngestOptions, checkpoint_dir, ingest_on_ray

    settings = settings_for("milvus-server", tmp_path, milvus_server)
    build_index(settings, encoders, pictures)
    opts = RayIngestOptions(batch_size=4)
    ck = checkpoint_dir(settings, opts, "pictures", settings.collection, "image")
    script = DRIVER.format(root=str(Path(__file__).resolve().parents[1]),
                           address=ray.get_runtime_context().gcs_address,
                           table=str(pictures / "captions.tsv"), images=str(pictures / "img"),
                           settings=settings.model_dump(mode="json"))
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while driver.poll() is None and time.time() < deadline:
        if ck.is_dir() and len(list(ck.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
    driver.kill()
    driver.wait()
    src = source(pictures, 120)
    # another block size on the rerun: the checkpoint is keyed by item, not by block
    s = ingest_on_ray(settings, src, "image", RayIngestOptions(batch_size=6),
                      source_name="pictures", progress=False)
    assert 0 < s.resumed_at < 120 and s.source_items == 120, s.report()
    assert s.ingested + s.updated == 120 - s.resumed_at, s.report()
    assert_same(stored(settings), reference(encoders, pictures, "image", src))


def test_cli_ingest_on_ray(local_ray, tmp_path, pictures, capfd):
    """``asif-index ingest --ray``: on the running Ray, into an embedded Qdrant; the index
    then answers searches; what --ray cannot do is refused before any work."""
    pytest.importorskip("qdrant_edge")
    import json

    from asif_cli.main import main

    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "cli",
         "--cache-dir", str(tmp_path / "cache")]
    assert main(["init", "--k", "10"] + a) == 0
    half = tmp_path / "half.tsv"
    half.write_text("\n".join((pictures / "captions.tsv").read_text().splitlines()[:25]) + "\n")
    assert main(["anchors", "add", "--captions", str(half), "--images",
                 str(pictures / "img")] + a) == 0
    capfd.readouterr()
    assert main(["ingest", "--ray", "--captions", str(pictures / "captions.tsv"), "--images",
                 str(pictures / "img"), "--batch-size", "32"] + a) == 0
    out = capfd.readouterr().out
    assert "ingested 120 new" in out and "skipped 2 of 122" in out, out
    assert main(["search", "--text", "a blue circle number 3", "--limit", "3", "--json"]
                + a) == 0
    hits = json.loads(capfd.readouterr().out)["hits"]
    assert len(hits) == 3 and all(h["payload"]["path"].endswith(".png") for h in hits)
    assert main(["ingest", "--ray", "--folder", str(pictures / "img"), "--tag-with", "x"]
                + a) == 2
    assert "--tag-with runs in the single-process ingest only" in capfd.readouterr().err
    assert main(["ingest", "--ray", "--folder", str(pictures / "img"), "--ray-writers", "3"]
                + a) == 2
    assert "admits one writer" in capfd.readouterr().err


# --------------------------------------------------------------- distributed anchor updates
def update_scenario(store):
    """The congruence scenario's index (400 anchors, 1,000 items; no models) in ``store``,
    and the update every test applies: 40 new anchors, 25 removed."""
    from asif_index.anchors import AnchorPayload
    from connectors.index import Index
    from tests.test_congruence import DI, DT, K, N_ANCHORS, FakeEncoder, make_scenario

    sc = make_scenario()
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=K, p=8.0)
    idx.add_anchor_embeddings(sc["anchor_img"][:360], sc["anchor_txt"][:360],
                              [AnchorPayload(f"caption {i}") for i in range(360)])
    for mod, emb in (("image", sc["item_img"]), ("text", sc["item_txt"])):
        recs, _ = idx.records(emb, mod, [f"{mod}-{i}" for i in range(len(emb))],
                              [{"n": i} for i in range(len(emb))])
        idx.write(recs)
    new = (sc["anchor_img"][360:N_ANCHORS], sc["anchor_txt"][360:N_ANCHORS],
           [AnchorPayload(f"new {i}") for i in range(N_ANCHORS - 360)])
    return idx, new


def apply_update(idx, new, item_pass=None):
    idx.add_anchor_embeddings(*new, item_pass=item_pass)
    return idx.remove_anchors(np.arange(0, 50, 2), item_pass=item_pass)


def visible(store, version):
    return {r.id: r for b in store.scroll_items(version=version) for r in b}


@pytest.fixture()
def updated_reference():
    """The same update applied in one process to an in-memory index: {point id: record}."""
    from connectors.memory import MemoryStore

    idx, new = update_scenario(MemoryStore("ref"))
    res = apply_update(idx, new)
    return visible(idx.store, res.version), res


def milvus_settings(server, name):
    from asif_index.config import AsifSettings

    return AsifSettings(backend="milvus", url=server.uri, collection=name)


def test_distributed_update_equals_one_process(local_ray, milvus_server, updated_reference):
    """An add and a removal whose item passes run as 3 Ray tasks over disjoint id ranges:
    every point at the new version equals the one-process update's; one switch per update."""
    from connectors.distributed.updates import RayItemPass
    from connectors.milvus import MilvusStore

    want, ref = updated_reference
    store = MilvusStore("upd", uri=milvus_server.uri)
    idx, new = update_scenario(store)
    rp = RayItemPass(milvus_settings(milvus_server, "upd"), store.name, workers=3, batch=64)
    res = apply_update(idx, new, rp)
    assert res.version == ref.version and res.items_touched == ref.items_touched
    assert len(rp.last) == 3 and sum(s for s, _ in rp.last) == 1000
    assert all(s > 200 for s, _ in rp.last), rp.last  # the ranges share the work
    assert store.read_manifest().version == res.version
    assert_same(visible(store, res.version), want)


def test_distributed_update_refuses_what_cannot_work(local_ray, tmp_path):
    from asif_index.config import AsifSettings
    from asif_index.errors import ConfigError
    from connectors.distributed.updates import RayItemPass

    with pytest.raises(ConfigError, match="server"):
        RayItemPass(AsifSettings(backend="qdrant", path=str(tmp_path)), "x")
    with pytest.raises(ConfigError, match="workers"):
        RayItemPass(AsifSettings(backend="milvus", url="http://127.0.0.1:1"), "x", workers=0)


def test_update_survives_a_killed_worker(local_ray, milvus_server, updated_reference):
    """A range task's worker is SIGKILLed mid-pass: Ray re-runs the range, whose writes are
    idempotent, and the update ends equal to the one-process update."""
    import os
    import signal
    import threading
    import time

    from connectors.distributed.updates import RayItemPass
    from connectors.milvus import MilvusStore

    want, ref = updated_reference
    store = MilvusStore("updkill", uri=milvus_server.uri)
    idx, new = update_scenario(store)
    rp = RayItemPass(milvus_settings(milvus_server, "updkill"), store.name, workers=3,
                     batch=10)
    killed, out = [], {}
    run = threading.Thread(target=lambda: out.update(r=apply_update(idx, new, rp)))
    run.start()
    deadline = time.time() + 120
    while run.is_alive() and time.time() < deadline and not killed:
        pids = worker_pids("ray::_range_pass")
        if pids:
            time.sleep(0.3)  # some of its batches written
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        time.sleep(0.02)
    run.join(300)
    assert killed, "the update ended before a range task could be killed"
    assert out["r"].version == ref.version
    assert_same(visible(store, ref.version), want)


UPDATER = """
import sys
sys.path.insert(0, {root!r})
import numpy as np, ray
from asif_index.anchors import AnchorPayload
from asif_index.config import AsifSettings
from connectors.distributed.updates import RayItemPass
from connectors.index import Index
from connectors.milvus import MilvusStore
ray.init(address={address!r}, log_to_driver=False, configure_logging=False)
store = MilvusStore({name!r}, uri={uri!r})
idx = Index.open_writer(store)
new = np.load({npz!r})
rp = RayItemPass(AsifSettings(backend="milvus", url={uri!r}, collection={name!r}), {name!r},
                 workers=3, batch=10)
idx.add_anchor_embeddings(new["img"], new["txt"], [AnchorPayload(f"new {{i}}") for i in
                          range(len(new["img"]))], item_pass=rp)
"""


def test_update_resumes_after_a_killed_driver(local_ray, milvus_server, updated_reference,
                                              tmp_path):
    """The updating driver (its own process) is SIGKILLed during the item pass, after the
    journal and the new anchors landed; the update resumed from the journal by another
    driver on Ray converges to the one-process update."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from connectors.distributed.updates import RayItemPass
    from connectors.index import Index
    from connectors.milvus import MilvusStore
    from connectors.versioning import JOURNAL

    want, ref = updated_reference
    store = MilvusStore("upddrv", uri=milvus_server.uri)
    idx, new = update_scenario(store)
    np.savez(tmp_path / "new.npz", img=new[0], txt=new[1])
    before = store.count_items()
    script = UPDATER.format(root=str(Path(__file__).resolve().parents[1]),
                            address=ray.get_runtime_context().gcs_address, name=store.name,
                            uri=milvus_server.uri, npz=str(tmp_path / "new.npz"))
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while driver.poll() is None and time.time() < deadline:
        if store.get_doc(JOURNAL) and store.count_items() > before + 20:  # mid item pass
            break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
    driver.kill()
    driver.wait()
    assert store.read_manifest().version == 1 and store.get_doc(JOURNAL)  # not switched
    again = Index.open_writer(store)
    rp = RayItemPass(milvus_settings(milvus_server, "upddrv"), store.name, workers=2)
    r = again.resume_update(item_pass=rp)
    assert r.resumed and r.version == 2
    res = again.remove_anchors(np.arange(0, 50, 2), item_pass=rp)
    assert res.version == ref.version and store.get_doc(JOURNAL) is None
    assert_same(visible(store, ref.version), want)


def test_cli_anchor_update_on_ray(local_ray, milvus_server, pictures, tmp_path, capfd):
    """``anchors add|remove --ray``: the item passes run as Ray tasks against a server; the
    stored items stay visible and exact counts are reported; an embedded index is refused."""
    import json

    from asif_cli.main import main

    a = ["--backend", "milvus", "--url", milvus_server.uri, "--name", "cliupd",
         "--cache-dir", str(tmp_path / "cache")]
    rows = (pictures / "captions.tsv").read_text().splitlines()
    (tmp_path / "a.tsv").write_text("\n".join(rows[:21]) + "\n")
    (tmp_path / "b.tsv").write_text("\n".join(rows[:1] + rows[21:31]) + "\n")
    assert main(["init", "--k", "8"] + a) == 0
    assert main(["anchors", "add", "--captions", str(tmp_path / "a.tsv"), "--images",
                 str(pictures / "img")] + a) == 0
    assert main(["ingest", "--captions", str(pictures / "captions.tsv"), "--images",
                 str(pictures / "img"), "--modality", "both"] + a) == 0
    capfd.readouterr()
    assert main(["anchors", "add", "--captions", str(tmp_path / "b.tsv"), "--images",
                 str(pictures / "img"), "--ray", "--ray-workers", "3"] + a) == 0
    assert "anchors: 30 (version 2)" in capfd.readouterr().out
    assert main(["anchors", "remove", "--ids", "0-4", "--ray", "--ray-workers", "2"] + a) == 0
    out = capfd.readouterr().out
    assert "removed 5 anchors: version 3" in out and "of 242 items" in out, out
    assert main(["anchors", "status"] + a) == 0
    st = json.loads(capfd.readouterr().out)
    assert st["pending_update"] is None and st["visible_items"] == 242 and st["anchors"] == 25
    q = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "x"]
    assert main(["init"] + q) == 0
    assert main(["anchors", "remove", "--ids", "0", "--ray"] + q) == 2
