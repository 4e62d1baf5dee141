"""The database commands of the CLI, end to end on both embedded backends."""

import json

import numpy as np
import pytest
from PIL import Image

from asif_cli.main import main


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    (root / "img").mkdir()
    rows = ["image\tcaption"]
    colours = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
    n = 0
    for name, rgb in colours.items():
        for s in range(5):
            a = np.full((48, 48, 3), 20, np.uint8)
            a[4 + s:44 - s, 4 + s:44 - s] = rgb
            Image.fromarray(a).save(root / "img" / f"{n}.png")
            rows.append(f"{n}.png\ta {name} square")
            n += 1
    (root / "pairs.tsv").write_text("\n".join(rows) + "\n")
    (root / "half.tsv").write_text("\n".join([rows[0]] + rows[1::2]) + "\n")  # all colours
    return root


@pytest.mark.parametrize("backend", ["qdrant", "milvus"])
def test_cli_lifecycle(backend, pairs, tmp_path, capfd):
    pytest.importorskip("qdrant_client" if backend == "qdrant" else "milvus_lite")
    path = tmp_path / ("q" if backend == "qdrant" else "m.db")
    a = ["--backend", backend, "--path", str(path), "--name", "cli",
         "--cache-dir", str(tmp_path / "cache")]

    def run(*args):
        rc = main(list(args) + a)
        out = capfd.readouterr()  # file descriptors: a library's own log handler shows too
        assert rc == 0, out.err
        assert "WARNING" not in out.err and "Warning" not in out.err, out.err  # quiet without -v
        return out.out

    assert json.loads(run("init", "--k", "6"))["k"] == 6
    assert "anchors: 8" in run("anchors", "add", "--captions", str(pairs / "half.tsv"),
                               "--images", str(pairs / "img"))
    assert "ingested 15 new" in run("ingest", "--captions", str(pairs / "pairs.tsv"),
                                    "--images", str(pairs / "img"))
    first = run("search", "--text", "a blue square", "--limit", "3").splitlines()
    assert len(first) == 3 and all("blue" in line for line in first)
    normalised = run("search", "--text", "a blue square", "--limit", "3", "--qbnorm")
    assert len(normalised.splitlines()) == 3 and "blue" in normalised.splitlines()[0]
    item = first[0].split()[2]
    assert "shared anchors" in run("explain", "--item", item, "--text", "a blue square")
    assert "green square" in run("classify", "--images", str(pairs / "img" / "6.png"),
                                 "--labels", "red square,green square,blue square")
    assert "anchors: 15" in run("anchors", "add", "--captions", str(pairs / "pairs.tsv"),
                                "--images", str(pairs / "img"))
    assert "re-projected" in run("anchors", "remove", "--ids", "0,1")
    st = json.loads(run("anchors", "status"))
    assert st["pending_update"] is None and st["visible_items"] == 15 and st["anchors"] == 13
    assert "alias 'cli' now points at it" in run("anchors", "rebuild", "--k", "4")
    stats = json.loads(run("stats"))
    assert stats["k"] == 4 and stats["items"] == 15 and stats["anchors"] == 13
    # the colour squares' images and captions share their structure; shuffled, they do not
    doc = json.loads(run("doctor", "--json"))
    real, shuffled = doc["runs"]["real"], doc["runs"]["shuffled captions"]
    assert real["pairs"] == 13 and real["usable"] and not shuffled["usable"]
    assert real["linear_cka"] > shuffled["linear_cka"] and "unusable" in shuffled["verdict"]
    # one space for both modalities: a composed query, a heat map
    blue = str(pairs / "img" / "10.png")
    mixed = run("search", "--image", blue, "--text", "a red square", "--image-weight", "0.5",
                "--filter", "modality=image", "--limit", "15", "--json")
    assert len(json.loads(mixed)["hits"]) == 15 and "+ 'a red square'" in json.loads(mixed)["query"]
    out = tmp_path / "heat.png"
    loc = json.loads(run("locate", "--image", blue, "--text", "a blue square", "--out",
                         str(out), "--scales", "0.5", "--json"))
    assert out.is_file() and Image.open(out).size == (48, 48) and loc["crops"] == 9
    # a head trained on text alone labels the photos and tags new items at ingest
    assert "saved to" in run("train-text-classifier", "--head", "colours", "--labels",
                             "red,green,blue")
    got = json.loads(run("classify", "--images", blue, "--head", "colours", "--json"))
    assert set(got["scores"]) == {"red", "green", "blue"}
    assert "ingested" in run("ingest", "--captions", str(pairs / "half.tsv"), "--images",
                             str(pairs / "img"), "--tag-with", "colours")
    every = json.loads(run("search", "--text", "a square", "--limit", "15", "--json"))["hits"]
    tags = [h["payload"].get("tag_colours") for h in every]
    # only the 8 photos of half.tsv were re-ingested with tags
    assert 0 < len([t for t in tags if t]) <= 8 and None in tags
    assert set(tags) - {None} <= {"red", "green", "blue"}
    tag = next(t for t in tags if t)
    tagged = json.loads(run("search", "--text", "a square", "--filter", f"tag_colours={tag}",
                            "--limit", "15", "--json"))["hits"]
    assert len(tagged) >= tags.count(tag) and all(h["payload"]["tag_colours"] == tag
                                                  for h in tagged)
    # errors are one line, name the problem, and change nothing
    assert main(["search", "--text", "x", "--item", "y"] + a) == 2
    assert "cannot be combined" in capfd.readouterr().err
    assert main(["classify", "--images", blue, "--head", "nope"] + a) == 2
    assert "no classifier head 'nope'" in capfd.readouterr().err
    assert main(["init"] + a) == 2
    assert "already exists" in capfd.readouterr().err
    assert main(["search", "--text", "x", "--image-encoder", "timm:resnet18:/none.pth"] + a) == 2
    assert "does not exist" in capfd.readouterr().err
    assert json.loads(run("stats"))["items"] == 15


def test_migrate_a_local_mode_index_into_qdrant_edge(tmp_path, capsys):
    """asif-index 0.1 wrote embedded Qdrant indexes with qdrant-client's local mode; one
    command copies such an index (every version) into the Qdrant engine."""
    pytest.importorskip("qdrant_edge")
    from connectors.index import Index
    from connectors.qdrant import QdrantStore
    from tests.test_congruence import FakeEncoder
    from tests.test_updates import DI, DT, assert_equals_rebuild, build

    old = build("qdrant-local", tmp_path)  # anchors, 300 items, one update's history below
    from asif_index.anchors import AnchorPayload
    from connectors.updates import update_anchors
    from tests.test_updates import data

    update_anchors(old, add=(*data(3, 12), [AnchorPayload("n")] * 12))
    q = old.project(data(9, 1)[1], "text")
    want = [(h.id, round(h.score, 5)) for h in old.search_vectors(q, 10)[0]]
    name, old_dir = old.store.name, old.store.where
    points = old.store.count_items()
    old.store.close()
    rc = main(["index", "migrate", "--from-qdrant-local", old_dir, "--backend", "qdrant",
               "--path", str(tmp_path / "edge"), "--name", name])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"{points} stored points" in out.out
    from asif_index.config import AsifSettings
    from connectors import open_store

    store = open_store(AsifSettings.load(backend="qdrant", path=tmp_path / "edge", collection=name))
    assert store.engine == "qdrant-edge" and store.count_items() == points
    new = Index.open(store, FakeEncoder("image", DI), FakeEncoder("text", DT))
    assert new.version == old.version
    assert [(h.id, round(h.score, 5)) for h in new.search_vectors(q, 10)[0]] == want
    assert_equals_rebuild(new)
    src = QdrantStore(name, path=old_dir)
    assert src.count_items() == points  # the source is untouched
    src.close()
    # migrating again into the same place is refused, the copy stays
    assert main(["index", "migrate", "--from-qdrant-local", old_dir, "--backend", "qdrant",
                 "--path", str(tmp_path / "edge"), "--name", name]) == 2
    assert "already exists" in capsys.readouterr().err


def test_serve_command_answers_http_with_keys(pairs, tmp_path, capsys):
    """`asif-index serve` as a real process (uvicorn on a loopback port): health without a
    key, 401 without one on search, results with one; Ctrl-C (SIGINT) stops it cleanly."""
    pytest.importorskip("fastapi")
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    path = tmp_path / "q"
    a = ["--backend", "qdrant", "--path", str(path), "--name", "svc",
         "--cache-dir", str(tmp_path / "cache")]
    assert main(["init", "--k", "6"] + a) == 0
    assert main(["anchors", "add", "--captions", str(pairs / "pairs.tsv"), "--images",
                 str(pairs / "img")] + a) == 0
    assert main(["ingest", "--captions", str(pairs / "pairs.tsv"), "--images",
                 str(pairs / "img")] + a) == 0
    capsys.readouterr()
    from connectors import close_embedded

    close_embedded()  # this process lets go of the shard, as the CLI's exit would
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ASIF_SERVE_READ_KEYS": "k-read"}
    proc = subprocess.Popen([sys.executable, "-m", "asif_cli.main", "serve", "--port", str(port),
                             "--image-root", str(pairs)] + a, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        assert httpx.post(base + "/search", json={"text": "a red square"}).status_code == 401
        r = httpx.post(base + "/search", json={"text": "a red square", "limit": 3,
                                                "modality": "image"},
                       headers={"X-API-Key": "k-read"}, timeout=60)
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert len(hits) == 3 and all("red" in h["payload"].get("caption", "red") for h in hits[:1])
        t = httpx.get(base + hits[0]["thumbnail_url"], headers={"X-API-Key": "k-read"})
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out, out


def test_serve_resumes_a_job_killed_with_the_server(pairs, tmp_path, capsys):
    """An ingest job runs in `asif-index serve`; the server is SIGKILLed mid-job and started
    again: the job resumes from its checkpoint and ends with every item stored once."""
    pytest.importorskip("fastapi")
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from connectors import close_embedded

    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "jobs",
         "--cache-dir", str(tmp_path / "cache")]
    assert main(["init", "--k", "6"] + a) == 0
    assert main(["anchors", "add", "--captions", str(pairs / "pairs.tsv"), "--images",
                 str(pairs / "img")] + a) == 0
    close_embedded()
    capsys.readouterr()
    texts = pairs / "texts.txt"
    texts.write_text("\n".join(f"a {c} shape number {i}" for i in range(1500)
                               for c in ["red"]) + "\n")
    env = {**os.environ, "ASIF_SERVE_ADMIN_KEYS": "adm"}
    key = {"X-API-Key": "adm"}

    def start():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "asif_cli.main", "serve", "--port",
                                 str(port), "--image-root", str(pairs)] + a, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    return proc, base
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        raise AssertionError("server did not start")

    proc, base = start()
    try:
        job = httpx.post(base + "/jobs/ingest", json={"texts": "texts.txt", "modality": "text"},
                         headers=key).json()
        for _ in range(600):
            j = httpx.get(f"{base}/jobs/{job['id']}", headers=key).json()
            if j["done"] > 0:
                break
            time.sleep(0.1)
        assert 0 < j["done"] < 1500, j
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    proc, base = start()
    try:
        for _ in range(1200):
            j = httpx.get(f"{base}/jobs/{job['id']}", headers=key).json()
            if j["state"] not in ("queued", "running"):
                break
            time.sleep(0.1)
        assert j["state"] == "done" and j["runs"] == 2, j
        assert j["done"] == 1500
        stats = httpx.get(base + "/stats", headers=key).json()
        assert stats["text_items"] == 1500 and stats["stored_points"] == 1500
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "resuming 1 unfinished job" in out


def test_maintenance_commands_load_no_encoder(pairs, tmp_path):
    """items delete, anchors remove and anchors status --resume read stored raw embeddings
    only: a fresh process running them never imports the encoders' modules (nor their
    weights), so they start in about the time of the database's own open."""
    import subprocess
    import sys

    pytest.importorskip("qdrant_edge")
    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "m",
         "--cache-dir", str(tmp_path / "cache")]
    assert main(["init", "--k", "6"] + a) == 0
    assert main(["anchors", "add", "--captions", str(pairs / "half.tsv"), "--images",
                 str(pairs / "img")] + a) == 0
    assert main(["ingest", "--captions", str(pairs / "pairs.tsv"), "--images",
                 str(pairs / "img"), "--source", "first"] + a) == 0
    from connectors import close_embedded

    close_embedded()  # the subprocesses open the folder themselves
    probe = ("import json, os, sys, time\n"
             "t = time.perf_counter()\n"
             "from asif_cli.main import main\n"
             "rc = main(sys.argv[1:])\n"
             "print(json.dumps({'rc': rc, 's': time.perf_counter() - t, 'encoders': sorted("
             "m for m in sys.modules if m.startswith(('asif_index.encoders.image', "
             "'asif_index.encoders.text', 'safetensors', 'tokenizers', 'transformers'))), "
             "'torch': 'torch' in sys.modules}))\n")
    # (command, exit code, needs torch): only re-projecting items runs the top-k engine
    for cmd, rc, torch in ((["anchors", "remove", "--ids", "999"], 2, False),
                           (["items", "delete", "--filter", "year>=abc"], 2, False),
                           (["anchors", "remove", "--ids", "1"], 0, True),
                           (["anchors", "status", "--resume"], 0, False),
                           (["items", "delete", "--filter", "source=first"], 0, False),
                           (["search", "--text", "x", "--limit", "0"], 2, False),
                           (["index", "export", str(tmp_path / "items.jsonl")], 0, False),
                           (["index", "drop", "m", "--yes"], 0, False)):
        out = subprocess.run([sys.executable, "-c", probe, *cmd, *a], capture_output=True,
                             text=True, timeout=300)
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        assert doc["rc"] == rc and doc["encoders"] == [], (cmd, doc, out.stderr[-2000:])
        assert doc["torch"] == torch, (cmd, doc)
        if rc == 2:
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        elif cmd[0] == "items":
            assert "deleted 15 items" in out.stdout, out.stdout
        elif cmd[:2] == ["index", "export"]:  # what delete left: nothing of source 'first'
            assert "exported 0 items" in out.stdout, out.stdout


def test_index_keeps_its_encoders_when_the_default_changes(pairs, tmp_path, capfd):
    """An index made with the light encoder (or one made before manifests stored specs,
    naming only 'efficientnet-lite0-imagenet') opens with that encoder when no
    --image-encoder is given; a different one given explicitly is refused with the flag that
    fixes it."""
    pytest.importorskip("qdrant_edge")
    from asif_index.encoders.registry import ENCODER_SPECS_KEY
    from connectors import open_store
    from asif_index.config import AsifSettings

    path = tmp_path / "q"
    a = ["--backend", "qdrant", "--path", str(path), "--name", "own",
         "--cache-dir", str(tmp_path / "cache")]
    assert main(["init", "--k", "4", "--image-encoder", "light"] + a) == 0
    store = open_store(AsifSettings.load(None, backend="qdrant", path=str(path),
                                         collection="own"), must_exist=True)
    man = store.read_manifest()
    assert man.extra[ENCODER_SPECS_KEY] == {"image": "efficientnet-lite0", "text": "default"}
    assert man.image_encoder == "efficientnet-lite0-imagenet"
    # the stored spec removed: what an index made before specs holds; its name still says
    man.extra.pop(ENCODER_SPECS_KEY)
    store.write_manifest(man)
    assert main(["anchors", "add", "--captions", str(pairs / "half.tsv"),
                 "--images", str(pairs / "img")] + a) == 0
    assert main(["ingest", "--captions", str(pairs / "pairs.tsv"),
                 "--images", str(pairs / "img")] + a) == 0
    capfd.readouterr()
    assert main(["search", "--text", "a blue square", "--limit", "2", "--json"] + a) == 0
    hits = json.loads(capfd.readouterr().out)["hits"]
    assert len(hits) == 2
    assert main(["search", "--text", "a blue square", "--image-encoder", "default"] + a) == 2
    err = capfd.readouterr().err
    assert "other encoders" in err and "--image-encoder 'efficientnet-lite0'" in err
    # a new index without the flag gets today's default, the Lite ensemble, and says so
    from asif_index.encoders.registry import canonical_image_spec

    b = a[:a.index("--name") + 1] + ["dflt"] + a[a.index("--name") + 2:]
    assert main(["init", "--k", "4"] + b) == 0
    man = open_store(AsifSettings.load(None, backend="qdrant", path=str(path),
                                       collection="dflt"), must_exist=True).read_manifest()
    assert man.extra[ENCODER_SPECS_KEY]["image"] == canonical_image_spec("default")
    assert man.image_encoder.startswith("ensemble[efficientnet-lite0-imagenet*")
    assert man.image_dim == 3 * 1280
