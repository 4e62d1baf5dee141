"""One modality-agnostic space (asif_index.methods.unified, .locate): composed queries, every
search direction, the modality gap and zero-shot localisation, on data whose answer is known;
then through an Index on the bundled sample photos."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.errors import ConfigError, ModalityError, ShapeError
from asif_index.methods.locate import (
    crop_boxes,
    heat_map,
    inside,
    locate,
    overlay,
    peak,
    pointing_game,
)
from asif_index.methods.unified import (
    any_to_any,
    compose,
    consensus_words,
    image_relevance,
    modality_gap,
)
from asif_index.sparse import SparseBatch


def sb(rows):
    """SparseBatch from [{anchor id: value}] rows (padded with zeros)."""
    w = max(len(r) for r in rows)
    idx = np.zeros((len(rows), w), np.int64)
    val = np.zeros((len(rows), w), np.float32)
    for i, r in enumerate(rows):
        for j, (a, v) in enumerate(sorted(r.items(), key=lambda kv: -kv[1])):
            idx[i, j], val[i, j] = a, v
    val /= np.maximum(np.linalg.norm(val, axis=1, keepdims=True), 1e-30)
    return SparseBatch(idx, val, np.zeros(len(rows), np.float32))


def dense(b: SparseBatch, n=16):
    return b.to_csr(n).toarray()


def test_compose_weights_are_shares_of_the_query():
    a, b = sb([{0: 1.0}]), sb([{1: 1.0}])
    q = compose([(a, 0.25), (b, 0.75)])
    d = dense(q)[0]
    assert d[1] / d[0] == pytest.approx(3.0)
    assert np.linalg.norm(d) == pytest.approx(1.0)
    assert np.isnan(q.kth_similarity).all()
    # one part alone is that part, and overlapping ids add up
    assert np.allclose(dense(compose([(a, 2.0)])), dense(a))
    both = dense(compose([(sb([{0: 1.0, 2: 1.0}]), 1.0), (sb([{2: 1.0}]), 1.0)]))[0]
    assert both[2] > both[0] > 0
    # a negative weight steers away and is clipped like a relative vector
    away = dense(compose([(sb([{0: 1.0, 2: 1.0}]), 1.0), (sb([{2: 1.0}]), -2.0)]))[0]
    assert away[2] == 0 and away[0] == pytest.approx(1.0)


def test_compose_rejects_what_cannot_be_a_query():
    a = sb([{0: 1.0}])
    with pytest.raises(ConfigError, match="at least one"):
        compose([])
    with pytest.raises(ConfigError, match="not all zero"):
        compose([(a, 0.0)])
    with pytest.raises(ConfigError, match="cancels out"):
        compose([(a, 1.0), (a, -1.0)])
    with pytest.raises(ShapeError, match="same number of rows"):
        compose([(a, 1.0), (sb([{0: 1.0}, {1: 1.0}]), 1.0)])


def test_every_direction_finds_its_pair_in_a_space_with_shared_meaning():
    """Photos and captions from one latent: the ASIF space must recover caption -> photo,
    photo -> caption and same-photo captions well above chance, and lose it when the captions
    are shuffled."""
    rng = np.random.default_rng(0)
    d_lat, n_anchor, n_img = 24, 400, 40
    mi, mt = rng.standard_normal((d_lat, 64)), rng.standard_normal((d_lat, 32))
    z_a = rng.standard_normal((n_anchor, d_lat))
    anchors = AnchorSet(AnchorManifest("i", "t", 64, 32))
    anchors.add((z_a @ mi).astype(np.float32), (z_a @ mt).astype(np.float32),
                [AnchorPayload(f"a{i}") for i in range(n_anchor)])
    z = rng.standard_normal((n_img, d_lat))
    text_image = np.repeat(np.arange(n_img), 2)
    zt = z[text_image] + 0.3 * rng.standard_normal((len(text_image), d_lat))
    iv = anchors.project((z @ mi).astype(np.float32), "image", 50, 4)
    tv = anchors.project((zt @ mt).astype(np.float32), "text", 50, 4)
    caps = [["dog ball grass"] * 5 if i % 2 else ["man bike street"] * 5 for i in range(n_img)]
    r = any_to_any(iv, tv, text_image, caps)
    assert r["T2I"]["R@1"] > 0.6 and r["I2T"]["R@1"] > 0.6 and r["T2T"]["R@1"] > 0.6
    assert r["I2I_queries"] == n_img and r["I2I_chance_relevant"] == pytest.approx(19 / 39)
    assert r["gap_R@1"] == pytest.approx(r["T2I"]["R@1"] - r["I2T"]["R@1"])
    shuffled = any_to_any(iv, tv, rng.permutation(text_image), caps)
    assert shuffled["T2I"]["R@1"] < 0.2
    with pytest.raises(ShapeError, match="text_image"):
        any_to_any(iv, tv, text_image[:-1], caps)


def test_consensus_words_define_which_photos_are_alike():
    assert consensus_words(["A dog runs.", "The dogs play", "a dog and a ball", "cat"]) == {"dog"}
    rel = image_relevance([["dog ball"] * 3, ["dogs with a ball"] * 3, ["dog on grass"] * 3])
    assert rel == [{1}, {0}, set()]


def test_modality_gap_tells_separate_clouds_from_one_cloud():
    img = sb([{0: 1.0, 1: 0.5}, {0: 0.9, 1: 0.6}, {0: 1.0, 1: 0.2}])
    txt_far = sb([{5: 1.0, 6: 0.5}, {5: 0.8, 6: 0.7}, {6: 1.0}])
    far = modality_gap(img, txt_far)
    assert far["image_nn_is_text"] == 0 and far["text_nn_is_image"] == 0
    assert far["centroid_cosine"] == pytest.approx(0.0)
    assert far["chance_image_nn_is_text"] == pytest.approx(3 / 5)
    near = modality_gap(img, sb([{0: 1.0, 1: 0.5}, {0: 0.9, 1: 0.6}, {0: 1.0, 1: 0.2}]))
    assert near["centroid_distance"] == pytest.approx(0.0, abs=1e-6)
    assert near["image_nn_is_text"] == 1.0  # each photo's twin caption is its nearest


def test_crops_cover_the_photo_and_the_heat_map_averages_them():
    boxes = crop_boxes(100, 60, (0.5, 0.3))
    for s in (0.5, 0.3):
        cover = np.zeros((60, 100), bool)
        for x0, y0, x1, y1 in boxes:
            if x1 - x0 == round(100 * s):
                cover[y0:y1, x0:x1] = True
        assert cover.all()
    h = heat_map(np.array([[0, 0, 10, 10], [5, 5, 10, 10]]), np.array([1.0, 3.0]), 10, 10)
    assert h[0, 0] == 1.0 and h[7, 7] == 2.0 and h.shape == (10, 10)
    assert peak(h) == (7, 7)
    with pytest.raises(ConfigError, match="scales"):
        crop_boxes(100, 100, (1.5,))
    with pytest.raises(ShapeError, match="too small"):
        crop_boxes(1, 100)


def test_pointing_game_counts_hits_with_the_tolerance():
    assert inside((5, 5), [[0, 0, 10, 10]]) and not inside((20, 5), [[0, 0, 10, 10]])
    assert inside((20, 5), [[0, 0, 10, 10]], tolerance=10)
    assert pointing_game([(5, 5), (50, 50)], [[[0, 0, 10, 10]], [[0, 0, 10, 10]]], 0) == 0.5
    with pytest.raises(ShapeError):
        pointing_game([(1, 1)], [])


def test_locate_finds_the_red_square_from_anchors_alone(tmp_path):
    """Colour 'encoders': a crop's image embedding is its mean colour, anchors pair pure
    colours with colour-word texts. The map for 'red' must peak on the red square."""
    anchors = AnchorSet(AnchorManifest("rgb", "words", 3, 3))
    cols = np.eye(3, dtype=np.float32) + 0.05
    anchors.add(cols, np.eye(3, dtype=np.float32) + 0.05,
                [AnchorPayload(c) for c in ("red", "green", "blue")])
    img = np.zeros((120, 160, 3), np.uint8)
    img[..., 1] = 200  # green field
    img[70:110, 20:60] = (230, 10, 10)  # red square

    def encode(crops):
        return np.stack([np.asarray(c, np.float32).reshape(-1, 3).mean(0) / 255 + 0.01
                         for c in crops])

    q = anchors.project(np.array([[1, 0.05, 0.05]], np.float32), "text", 3, 2)
    hm = locate(img, q, encode, lambda e: anchors.project(e, "image", 3, 2), (0.3, 0.2))[0]
    assert hm.values.shape == (120, 160)
    assert inside(hm.peak, [[20, 70, 60, 110]])
    out = overlay(img, hm.values)
    assert out.size == (160, 120)
    with pytest.raises(ShapeError):
        overlay(img, hm.values[:10])


def test_the_shipped_pointing_boxes_meet_the_annotation_brief():
    """At least 50 boxes over at least 30 Flickr8k dev photos, each inside the photo."""
    doc = json.loads((Path(__file__).parent.parent / "asif_index" / "data" /
                      "pointing_flickr8k_dev.json").read_text())
    boxes = [b for p in doc["photos"] for o in p["objects"] for b in o["boxes"]]
    assert len(doc["photos"]) >= 30 and len(boxes) >= 50 and "method" in doc
    assert all(0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224 for x0, y0, x1, y1 in boxes)


# ---------------------------------------------------------------- through an Index (real encoders)
@pytest.fixture(scope="module")
def sample_index(encoders, sample_embeddings):
    from connectors.index import Index
    from connectors.memory import MemoryStore

    img, txt, labels = sample_embeddings
    idx = Index.create(MemoryStore(), *encoders, k=16, p=8.0)
    idx.add_anchor_embeddings(img, txt, [AnchorPayload(f"{lb}") for lb in labels])
    return idx


def test_composed_search_through_the_index_moves_between_its_parts(sample_index):
    from asif_index.sample_data import sample_dir

    idx = sample_index
    photo = sample_dir() / "chelsea.png"
    qi, mi, _ = idx.query_vector(image=str(photo))
    qt, mt, _ = idx.query_vector(text="a rocket on the launch pad")
    qc, mc, _ = idx.query_vector(text="a rocket on the launch pad", image=str(photo),
                                 image_weight=0.5)
    assert (mi, mt, mc) == ("image", "text", "composed")
    s_img, s_txt = qc.dot(qi)[0, 0], qc.dot(qt)[0, 0]
    assert 0 < s_img < 1 and 0 < s_txt < 1  # the composed query lies between its parts
    lean_img = idx.query_vector(text="a rocket on the launch pad", image=str(photo),
                                image_weight=0.9)[0]
    assert lean_img.dot(qi)[0, 0] > s_img
    with pytest.raises(ConfigError, match="image_weight"):
        idx.query_vector(text="x", image=str(photo), image_weight=1.0)
    with pytest.raises(ModalityError):
        idx.query_vector()


def test_index_locate_returns_a_map_of_the_photo(sample_index, tmp_path):
    from asif_index.sample_data import sample_dir

    photo = sample_dir() / "chelsea.png"
    hm = sample_index.locate(str(photo), "a cat", scales=(0.5,))
    w, h = Image.open(photo).size
    assert hm.values.shape == (h, w) and len(hm.boxes) == len(hm.scores) >= 4
    assert np.isfinite(hm.values).all() and hm.values.max() > hm.values.min()


def test_reranked_search_reads_candidates_from_the_store(sample_index, sample_embeddings):
    idx = sample_index
    img, _, labels = sample_embeddings
    recs, _ = idx.records(img, "image", [f"s{i}" for i in range(len(img))],
                          [{"label": lb} for lb in labels])
    idx.write(recs)
    plain = idx.search(text="a cat", limit=5, filter={"modality": "image"}, qbnorm=False)
    same = idx.search_reranked(text="a cat", limit=5, filter={"modality": "image"},
                               candidates=10, weight=0.0)
    moved = idx.search_reranked(text="a cat", limit=5, filter={"modality": "image"},
                                candidates=10, weight=10.0)
    assert [h.id for h in same] == [h.id for h in plain]
    assert len(moved) == 5 and {h.id for h in moved} <= {h.id for h in idx.search(
        text="a cat", limit=10, filter={"modality": "image"}, qbnorm=False)}
    with pytest.raises(ModalityError):
        idx.search_reranked(text="a cat", image=img[0])
