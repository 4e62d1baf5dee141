"""Past one machine on Ray: anchors sharded across actors give the same relative vectors as one
engine; a distributed ingest writes what the single-process one writes, survives a killed
worker and resumes after a killed driver. Ray runs locally here (a head on loopback, small
object store); skipped without the [ray] extra."""

import numpy as np
import pytest

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.errors import AnchorError, ConfigError, ShapeError

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from tests.ray_support import (  # noqa: E402 - after the skip; fixtures by name
    assert_same,
    local_ray,
    milvus_server,
    pictures,
    worker_pids,
)

__all__ = ["local_ray", "milvus_server", "pictures"]  # fixtures used by name


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


_REFERENCES: dict = {}


def reference(encoders, root, modality, src):
    """The single-process ingest of the same source into memory: {point id: record} (made
    once per source and modality)."""
    key = (modality, tuple(it.key for it in src))
    if key not in _REFERENCES:
        _REFERENCES[key] = _reference(encoders, root, modality, src)
    return _REFERENCES[key]


def _reference(encoders, root, modality, src):
    from connectors.index import Index
    from connectors.memory import MemoryStore
    from connectors.pipeline import ingest_anchors, ingest_items

    idx = Index.create(MemoryStore("ref"), *encoders, k=20, p=8.0)
    ingest_anchors(idx, source(root)[:48:2], batch_size=12, progress=False)
    # the runs compared with it record the same ``source`` on every item
    ingest_items(idx, src, modality, batch_size=16, progress=False, item_source="test")
    return {r.id: r for batch in idx.store.scroll_items() for r in batch}


def stored(settings):
    from connectors import close_embedded, open_store

    store = open_store(settings, must_exist=True)
    out = {r.id: r for batch in store.scroll_items() for r in batch}
    close_embedded()
    return out


def settings_for(kind, tmp_path, server=None):
    from asif_index.config import AsifSettings

    common = dict(collection="dist", cache_dir=str(tmp_path / "cache"))
    if kind == "qdrant-embedded":
        pytest.importorskip("qdrant_edge")
        return AsifSettings(backend="qdrant", path=str(tmp_path / "edge"), **common)
    return AsifSettings(backend="milvus", url=server.uri, **common)


def test_distributed_ingest_equals_single_process(local_ray, pictures, encoders, tmp_path):
    """Both modalities through decode tasks, encode/project actors and the writer actor of
    an embedded Qdrant: the same ids, vectors and payloads as the single-process ingest; the
    corrupt and the missing image reported. (A Milvus Lite server gets the same comparison,
    and the resume, in the kill test.)"""
    from connectors.distributed.ingest import RayIngestOptions, ingest_on_ray

    settings = settings_for("qdrant-embedded", tmp_path)
    build_index(settings, encoders, pictures)
    src = source(pictures, 40) + source(pictures)[-2:]  # 40 drawings, the corrupt, the missing
    want = reference(encoders, pictures, "both", src)
    s = ingest_on_ray(settings, src, "both", RayIngestOptions(batch_size=8, writers=None),
                      source_name="pictures", progress=False,
                      item_source="test")
    assert s.source_items == 42 and s.ingested == 40 + 42 and s.updated == 0, s.report()
    assert sorted(k.split("|")[0] for k, _ in s.skipped) == ["corrupt.png", "missing.png"]
    assert any("cannot be decoded" in r for _, r in s.skipped)
    assert_same(stored(settings), want)


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
        samples.append((f"s{n}-bad", b"not a jpeg", f"broken number {n}"))
        shards.append(write_webdataset(tmp_path / f"{n:05d}.tar", samples))
    settings = settings_for("qdrant-embedded", tmp_path)
    build_index(settings, encoders, pictures)
    s = ingest_on_ray(settings, None, "both", RayIngestOptions(batch_size=4),
                      source_name="wds", webdataset=[str(x) for x in shards], progress=False,
                      item_source="test")
    # 12 photos and 14 captions (a broken image's caption is still a text item)
    assert s.ingested == 12 + 14 and len(s.skipped) == 2, s.report()
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
    with pytest.raises(ConfigError, match="milvus-lite server"):
        ingest_on_ray(AsifSettings(backend="milvus", path=str(tmp_path / "m.db")),
                      source(pictures, 4), "image")
    with pytest.raises(ConfigError, match="one of them"):
        ingest_on_ray(settings, None, "image")
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        RayIngestOptions(encoders=0)
    wrong = AsifSettings(**{**settings.model_dump(), "text_encoder": "hf:/nonexistent"})
    with pytest.raises(ConfigError):
        ingest_on_ray(wrong, source(pictures, 4), "text", progress=False)


DRIVER = """
import sys
sys.path.insert(0, {root!r})
import ray
from asif_index.config import AsifSettings
from connectors.distributed.ingest import RayIngestOptions, ingest_on_ray
from connectors.pipeline import read_captions_table
ray.init(address={address!r}, log_to_driver=False, configure_logging=False)
src = list(read_captions_table({table!r}, {images!r}))[:80]
ingest_on_ray(AsifSettings(**{settings!r}), src, "image", RayIngestOptions(batch_size=4),
              source_name="pictures", progress=False,
                      item_source="test")
"""


def test_killed_driver_resumes_and_a_killed_worker_loses_nothing(local_ray, tmp_path, pictures,
                                                                encoders, milvus_server):
    """Into a Milvus Lite gRPC server: the driver (its own process, on the running cluster)
    is SIGKILLed after some blocks landed; a new driver, with another block size, resumes
    from the checkpoint, and one of its encode actors is SIGKILLed mid-run (Ray restarts it
    and retries its blocks). The index equals the single-process ingest: nothing lost,
    nothing duplicated."""
    import os
    import signal
    import subprocess
    import sys
    import threading
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
                           settings=settings.model_dump(mode="json", exclude_unset=True))
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
    done = {f.name for f in ck.glob("*.parquet")}
    src = source(pictures, 80)
    result, killed = {}, []
    # another block size on the rerun: the checkpoint is keyed by item, not by block
    run = threading.Thread(target=lambda: result.update(s=ingest_on_ray(
        settings, src, "image", RayIngestOptions(batch_size=3), source_name="pictures",
        progress=False, item_source="test")))
    run.start()
    while run.is_alive() and time.time() < deadline and not killed:
        if {f.name for f in ck.glob("*.parquet")} - done:  # the rerun's blocks are landing
            for pid in worker_pids("EncodeActor"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.05)
    run.join(300)
    assert killed, "the rerun ended before an encode actor could be killed; give it more rows"
    s = result["s"]
    assert 0 < s.resumed_at < 80 and s.source_items == 80, s.report()
    assert s.ingested + s.updated == 80 - s.resumed_at, s.report()
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
    rows = (pictures / "captions.tsv").read_text().splitlines()
    some = tmp_path / "some.tsv"
    some.write_text("\n".join(rows[:41] + rows[-2:]) + "\n")  # 40 drawings, corrupt, missing
    capfd.readouterr()
    assert main(["ingest", "--ray", "--captions", str(some), "--images",
                 str(pictures / "img"), "--batch-size", "16"] + a) == 0
    out = capfd.readouterr().out
    assert "ingested 40 new" in out and "skipped 2 of 42" in out, out
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
