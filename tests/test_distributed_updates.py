"""Anchor updates whose item pass runs on Ray workers (one task per range of point ids): equal
to the one-process update, converging after a killed worker or a killed driver, and through
the command line. Ray runs locally (own module fixture); skipped without the [ray] extra."""

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from tests.ray_support import (  # noqa: E402 - after the skip; fixtures by name
    assert_same,
    local_ray,
    milvus_server,
    pictures,
    worker_pids,
)

__all__ = ["local_ray", "milvus_server", "pictures"]  # fixtures used by name


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


@pytest.fixture(scope="module")
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
