import io
import json

import numpy as np
import pytest
from PIL import Image

from asif_index.errors import BackendUnavailableError, ConfigError
from asif_index.recipe import PUBLISHED
from connectors.index import Index
from connectors.memory import MemoryStore
from connectors.pipeline import (
    ingest_anchors,
    ingest_items,
    read_captions_table,
    read_image_folder,
    read_texts,
    read_webdataset,
)
from connectors.pipeline.ingest import embed_stage, project_stage, write_stage
from connectors.pipeline.readers import write_webdataset
from tests.stores import make_store

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
SHAPES = ["square", "circle", "stripe"]


def draw(color, shape, seed):
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (64, 64), tuple(int(x) for x in rng.integers(0, 60, 3)))
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    o = int(rng.integers(4, 12))
    if shape == "square":
        d.rectangle([o, o, 64 - o, 64 - o], fill=COLORS[color])
    elif shape == "circle":
        d.ellipse([o, o, 64 - o, 64 - o], fill=COLORS[color])
    else:
        for x in range(0, 64, 12):
            d.rectangle([x, 0, x + 5, 64], fill=COLORS[color])
    return img


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A captions table beside an image folder (48 pairs, one corrupt, one missing)."""
    root = tmp_path_factory.mktemp("ds")
    (root / "img").mkdir()
    rows = ["image\tcaption"]
    n = 0
    for color in COLORS:
        for shape in SHAPES:
            for rep in range(4):
                draw(color, shape, n).save(root / "img" / f"{n:03d}.png")
                rows.append(f"{n:03d}.png\ta {color} {shape}")
                n += 1
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG broken")
    rows.append("corrupt.png\ta broken picture")
    rows.append("missing.png\ta picture that is not there")
    (root / "captions.tsv").write_text("\n".join(rows) + "\n")
    return root


def anchors_index(store, encoders, dataset, k=20):
    img, txt = encoders
    idx = Index.create(store, img, txt, k=k, p=8.0)
    src = [s for n, s in enumerate(read_captions_table(dataset / "captions.tsv", dataset / "img"))
           if n % 2 == 0]  # even rows become anchors
    summary = ingest_anchors(idx, src, batch_size=10, progress=False)
    return idx, summary


# -------------------------------------------------------------------------------- readers
def test_readers(dataset, tmp_path):
    items = list(read_captions_table(dataset / "captions.tsv", dataset / "img"))
    assert len(items) == 50 and items[0].text == "a red square"
    assert items[0].payload["path"].endswith("000.png")
    cls = tmp_path / "cls"
    for c in ("cat", "dog"):
        (cls / c).mkdir(parents=True)
        draw("red", "square", 1).save(cls / c / "a.png")
    got = list(read_image_folder(cls))
    assert [g.payload["label"] for g in got] == ["cat", "dog"]
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    assert [t.text for t in read_texts(tmp_path / "t.txt")] == ["one", "two"]
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert [t.text for t in read_texts(tmp_path / "t.jsonl")] == ["a", "b"]
    with pytest.raises(ConfigError, match="no column"):
        list(read_texts(tmp_path / "t.jsonl", column="caption"))
    buf = io.BytesIO()
    draw("blue", "circle", 2).save(buf, format="JPEG")
    shard = write_webdataset(tmp_path / "00000.tar", [("k0", buf.getvalue(), "a blue circle"),
                                                      ("k1", b"junk", "broken")])
    wd = list(read_webdataset([shard]))
    assert [w.text for w in wd] == ["a blue circle", "broken"] and wd[0].image == buf.getvalue()
    with pytest.raises(ConfigError, match="does not exist"):
        list(read_webdataset([tmp_path / "nope.tar"]))


# --------------------------------------------------------------------------------- stages
def test_stages_alone(dataset, encoders):
    img, txt = encoders
    items = list(read_captions_table(dataset / "captions.tsv", dataset / "img"))
    emb, kept, skipped, _ = embed_stage(img, items, "image")
    assert emb.shape == (48, 1280) and len(kept) == 48
    assert {k.split("|")[0] for k, _ in skipped} == {"corrupt.png", "missing.png"}
    assert any("cannot be decoded" in r for _, r in skipped)
    store = MemoryStore()
    idx = Index.create(store, img, txt, k=10, recipe=PUBLISHED)  # k=10 on both sides
    idx.add_anchor_embeddings(emb[:20], txt.encode([k.text for k in kept[:20]]),
                              [__import__("asif_index").AnchorPayload(k.text) for k in kept[:20]])
    recs, bad = project_stage(idx, emb[20:], kept[20:], "image")
    assert len(recs) == 28 and not bad
    assert all(len(r.sparse_indices) == 10 for r in recs)
    assert write_stage(idx, recs) == (28, 0)
    assert write_stage(idx, recs[:5]) == (0, 5)  # same content -> same ids -> update


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_ingest_end_to_end(kind, dataset, encoders, tmp_path):
    store = make_store(kind, tmp_path)
    idx, a_sum = anchors_index(store, encoders, dataset)
    assert a_sum.ingested == 24 and len(idx.anchors) == 24
    assert any("corrupt.png" in k for k, _ in a_sum.skipped)
    src = list(read_captions_table(dataset / "captions.tsv", dataset / "img"))
    s = ingest_items(idx, src, "both", batch_size=16, progress=False)
    # 48 good images + the distinct captions (the same text twice is the same item)
    n_text = len({it.text for it in src})
    assert s.ingested == 48 + n_text, s.report()
    assert s.ingested + s.updated < 48 + 50
    assert len(s.skipped) == 2 and "cannot be decoded" in s.report()
    assert store.count_items() == 48 + n_text
    again = ingest_items(idx, src, "both", batch_size=16, progress=False)
    assert again.ingested == 0 and again.updated == s.ingested + s.updated
    assert store.count_items() == 48 + n_text, "re-ingest never duplicates"
    a_again = ingest_anchors(idx, list(read_captions_table(dataset / "captions.tsv", dataset / "img"))[::2],
                             progress=False)
    assert a_again.ingested == 0 and len(idx.anchors) == 24, "anchors are not duplicated either"
    hits = idx.search(text="a yellow circle", limit=5, filter={"modality": "image"})
    assert hits[0].payload["caption"] in ("a yellow circle",), [h.payload["caption"] for h in hits]
    ex = idx.explain(hits[0].id, text="a yellow circle", top=3)
    # the default recipe normalised this cross-modal search; the explanation decomposes the
    # hit's score, the same number, into its similarity and the item's normaliser
    assert ex.similarity == pytest.approx(hits[0].similarity, abs=1e-4)
    assert ex.score == pytest.approx(hits[0].score, abs=1e-5) and 0 < ex.score < 1
    assert ex.temperature == 0.05 and ex.log_z is not None
    assert ex.score == pytest.approx(1 / (1 + np.exp(ex.log_z - ex.similarity / 0.05)), abs=1e-6)
    plain = idx.explain(hits[0].id, text="a yellow circle", top=3, qbnorm=False)
    assert plain.score == plain.similarity == pytest.approx(ex.similarity)
    assert ex.anchors and all("caption" in a for a in ex.anchors)
    labels, _ = idx.classify([dataset / "img" / "001.png"], ["red square", "blue circle"])
    assert labels == ["red square"]


def test_resume_after_crash_gives_identical_collection(dataset, encoders, tmp_path):
    src = list(read_captions_table(dataset / "captions.tsv", dataset / "img"))
    ref_idx, _ = anchors_index(MemoryStore("ref"), encoders, dataset)
    ingest_items(ref_idx, src, "image", batch_size=8, progress=False)

    store = MemoryStore("crash")
    idx, _ = anchors_index(store, encoders, dataset)
    real_upsert = store.upsert_items
    calls = {"n": 0}

    def dying_upsert(recs):
        calls["n"] += 1
        if calls["n"] == 3:
            real_upsert(recs[:3])  # half a batch lands, then the process "dies"
            raise KeyboardInterrupt
        real_upsert(recs)

    store.upsert_items = dying_upsert
    ck = tmp_path / "ck.json"
    with pytest.raises(KeyboardInterrupt):
        ingest_items(idx, src, "image", batch_size=8, checkpoint=ck, progress=False)
    assert json.loads(ck.read_text())["done"] == 16
    store.upsert_items = real_upsert
    s = ingest_items(idx, src, "image", batch_size=8, checkpoint=ck, progress=False)
    assert s.source_items == 50 and s.ingested + s.updated == 48
    assert_same_items(store, ref_idx.store)
    with pytest.raises(ConfigError, match="another ingest"):
        ingest_items(idx, src, "text", checkpoint=ck, progress=False)


def assert_same_items(a, b):
    ra = {r.id: r for batch in a.scroll_items() for r in batch}
    rb = {r.id: r for batch in b.scroll_items() for r in batch}
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_array_equal(ra[k].sparse_indices, rb[k].sparse_indices)
        np.testing.assert_allclose(ra[k].sparse_values, rb[k].sparse_values, atol=1e-6)
        np.testing.assert_allclose(ra[k].embedding, rb[k].embedding, atol=1e-6)
        assert ra[k].payload == rb[k].payload


def test_kill_and_restart_real_milvus_server(dataset, encoders, tmp_path):
    """milvus-lite's gRPC server (the real C++ engine) is SIGKILLed mid-ingest, restarted on
    the same data file, and the ingest resumed: nothing lost, nothing duplicated."""
    pytest.importorskip("milvus_lite")
    from connectors.milvus import MilvusStore
    from connectors.servers import MilvusLiteServer

    src = list(read_captions_table(dataset / "captions.tsv", dataset / "img"))
    ref_idx, _ = anchors_index(MemoryStore("ref"), encoders, dataset)
    ingest_items(ref_idx, src, "both", batch_size=8, progress=False)

    server = MilvusLiteServer(tmp_path / "srv.db").start()
    try:
        store = MilvusStore("kill", uri=server.uri, timeout=2)
        idx, _ = anchors_index(store, encoders, dataset)
        ck = tmp_path / "kill.json"

        def killing_reader():
            for n, it in enumerate(src):
                if n == 20:
                    server.kill()  # dies while batch 3 is being read
                yield it

        with pytest.raises(BackendUnavailableError, match="server is running"):
            ingest_items(idx, killing_reader(), "both", batch_size=8, checkpoint=ck, progress=False)
        done = json.loads(ck.read_text())["done"]
        assert 0 < done < len(src)
        server.start()
        store2 = MilvusStore("kill", uri=server.uri, timeout=2)
        idx2 = Index.open(store2, *encoders)
        assert len(idx2.anchors) == 24
        ingest_items(idx2, src, "both", batch_size=8, checkpoint=ck, progress=False)
        assert store2.count_items() == ref_idx.store.count_items()
        assert_same_items(store2, ref_idx.store)
    finally:
        server.kill()
