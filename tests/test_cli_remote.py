"""search / classify / explain through a running service (--service / ASIF_SERVICE_URL): the
same answers as the index itself, without loading torch, encoders or the database here."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs the [serve] extra")

KEY = "remote-read-key"
# prints whether this process loaded torch, after the command ran
RUN = ("import sys; from asif_cli.main import main; rc = main(sys.argv[1:]); "
       "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr); "
       "sys.exit(rc)")


@pytest.fixture(scope="module")
def served(encoders, tmp_path_factory):
    from asif_index.sample_data import sample_pairs
    from connectors.index import Index
    from connectors.memory import MemoryStore
    from connectors.service import ServiceSettings, create_app
    from connectors.service.background import serving

    root = tmp_path_factory.mktemp("remote")
    arrays, captions, _ = sample_pairs()
    paths = []
    for i, a in enumerate(arrays):
        p = root / f"{i}.png"
        Image.fromarray(a).resize((96, 96)).save(p)
        paths.append(p)
    idx = Index.create(MemoryStore("remote"), *encoders, k=10)
    idx.add_anchors(paths[:24], captions[:24], [str(p) for p in paths[:24]])
    idx.add_items(paths[24:], "image", [{"path": str(p)} for p in paths[24:]])
    idx.add_items(captions[24:30], "text")
    app = create_app(idx, ServiceSettings(read_keys=[KEY], image_roots=[root]),
                     jobs_dir=root / "jobs")
    with serving(app) as base:
        yield base, idx, paths


def cli(*args, url, key=KEY):
    env = {**os.environ, "ASIF_SERVICE_URL": url, "ASIF_SERVICE_KEY": key}
    return subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_search_classify_explain_through_the_service(served):
    base, idx, paths = served
    r = cli("search", "--text", "a cat", "--limit", "4", "--json", url=base)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0].startswith(f"via the service at {base} (anchor version")
    assert r.stderr.splitlines()[-1] == "no torch"
    got = json.loads(r.stdout)["hits"]
    want = idx.search(text="a cat", limit=4)
    assert [h["id"] for h in got] == [h.id for h in want]
    assert [h["score"] for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    r = cli("search", "--text", "a cat", "--limit", "4", "--json", "--qbnorm", url=base)
    assert r.returncode == 0, r.stderr
    want = idx.search(text="a cat", limit=4, qbnorm=0.05)
    assert [h["id"] for h in json.loads(r.stdout)["hits"]] == [h.id for h in want]
    # an image query (uploaded) and a filter, then more-like-this
    r = cli("search", "--image", str(paths[30]), "--filter", "modality=image", "--json",
            "--limit", "3", url=base)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)["hits"]
    assert hits and {h["modality"] for h in hits} == {"image"}
    assert [h["id"] for h in hits] == [h.id for h in idx.search(image=paths[30], limit=3,
                                                                  filter={"modality": "image"})]
    r = cli("explain", "--item", hits[0]["id"], "--text", "a cat", "--json", url=base)
    assert r.returncode == 0, r.stderr
    ex = idx.explain(hits[0]["id"], text="a cat")
    assert json.loads(r.stdout)["score"] == pytest.approx(ex.score, abs=1e-5)
    r = cli("classify", "--images", str(paths[25]), str(paths[26]), "--labels", "cat,rocket,coffee",
            "--json", url=base)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    pred, _ = idx.classify([paths[25], paths[26]], ["cat", "rocket", "coffee"])
    assert [x["label"] for x in rows] == list(pred) and r.stderr.splitlines()[-1] == "no torch"


def test_service_errors_are_one_line(served):
    base, _, _ = served
    for args, url, key, says in [
            (["search", "--text", "x"], base, "wrong", "ASIF_SERVICE_KEY"),
            (["search", "--text", "x"], "http://127.0.0.1:9", KEY, "no asif-index service"),
            (["search", "--item", "no-such-item"], base, KEY, "no item with id"),
            (["classify", "--images", "x.png", "--labels", "a,b", "--reduce", "max"], base, KEY,
             "--reduce")]:
        r = cli(*args, url=url, key=key)
        lines = [x for x in r.stderr.splitlines() if x != "no torch" and not x.startswith("via")]
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], (args, r.stderr)
