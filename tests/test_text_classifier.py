"""Text-only supervision (asif_index.methods.text_classifier): sentences, noise, the mean shift,
heads that read images, persistence, and the Index's heads at ingest and query time."""

import numpy as np
import pytest

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.errors import ConfigError, InputError, ShapeError
from asif_index.methods import text_classifier as tc
from asif_index.sparse import SparseBatch


def test_sentences_take_templates_and_captions_naming_exactly_one_label():
    caps = ["a dog runs", "two dogs play", "a cat sleeps", "a dog chases a cat", "a red car"]
    sents, y = tc.training_sentences(["dog", "cat"], caps, templates=("a {}.",), per_label=1)
    assert sents[0] == "a dog." and y.tolist().count(0) == 2  # template + one capped caption
    assert "a dog chases a cat" not in sents and "a cat sleeps" in sents
    with pytest.raises(ConfigError, match="at least 2"):
        tc.training_sentences(["dog"])
    with pytest.raises(ConfigError, match="repeat"):
        tc.training_sentences(["dog", "dog"])


def test_noise_keeps_rows_unit_and_grows_with_the_scale():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(tc.noisy(x, 0.0, rng), u, atol=1e-6)
    small, big = tc.noisy(x, 0.02, rng), tc.noisy(x, 0.12, rng)
    assert np.allclose(np.linalg.norm(big, axis=1), 1, atol=1e-5)
    assert (small * u).sum(1).mean() > (big * u).sum(1).mean()


def test_leave_one_out_drops_the_anchor_and_its_duplicates():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((20, 8)).astype(np.float32)
    a[5] = a[3]  # a photo listed twice (as Flickr8k lists each photo for five captions)
    v = tc.leave_one_out_vectors(a, np.array([3, 7]), k=4, p=2)
    assert v[0, 3] == 0 and v[0, 5] == 0 and v[1, 7] == 0
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    shift = tc.modality_shift(a, a, (4, 2), (4, 2))
    assert np.allclose(shift, 0, atol=1e-6)  # the same cloud on both sides: no shift


def clustered(seed=0, n_classes=3, per=30):
    """Anchors and inputs from class centres shared by a 'photo' and a 'text' space."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n_classes, 12)) * 3
    mi, mt = rng.standard_normal((12, 40)), rng.standard_normal((12, 20))
    ya = np.repeat(np.arange(n_classes), per)
    za = c[ya] + rng.standard_normal((len(ya), 12))
    anchors = AnchorSet(AnchorManifest("i", "t", 40, 20))
    anchors.add((za @ mi).astype(np.float32), (za @ mt).astype(np.float32),
                [AnchorPayload(f"c{v}") for v in ya])
    return rng, c, mi, mt, anchors


@pytest.mark.parametrize("kind", ["centroid", "linear"])
@pytest.mark.parametrize("mitigation", ["none", "noise", "mean-shift", "both"])
def test_a_head_trained_on_text_labels_photos(kind, mitigation):
    rng, c, mi, mt, anchors = clustered()
    labels = ["alpha", "beta", "gamma"]
    # the text 'encoder' maps a sentence to its class centre plus noise, by the label it names
    def encode_text(sents):
        idx = [next(i for i, lb in enumerate(labels) if lb in s) for s in sents]
        z = c[idx] + 0.5 * rng.standard_normal((len(idx), 12))
        return (z @ mt).astype(np.float32)

    shift = (tc.modality_shift(anchors.matrix("image"), anchors.matrix("text"), (20, 4), (20, 4))
             if mitigation in ("mean-shift", "both") else None)
    head = tc.train_text_head(labels, encode_text, lambda e: anchors.project(e, "text", 20, 4),
                              anchors.ids, noise=0.05, mitigation=mitigation, kind=kind,
                              shift=shift, draws=2, steps=50)
    y = np.repeat(np.arange(3), 20)
    photos = ((c[y] + 0.5 * rng.standard_normal((len(y), 12))) @ mi).astype(np.float32)
    got, probs = head.predict(anchors.project(photos, "image", 20, 4))
    acc = np.mean([labels.index(g) == t for g, t in zip(got, y)])
    assert acc > 0.8, acc
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (head.shift is not None) == (mitigation in ("mean-shift", "both"))


def test_head_validation_and_unknown_anchor_ids(tmp_path):
    with pytest.raises(ConfigError, match="mitigation"):
        tc.train_text_head(["a", "b"], None, None, np.arange(3), mitigation="magic")
    with pytest.raises(ConfigError, match="needs shift"):
        tc.train_text_head(["a", "b"], None, None, np.arange(3), mitigation="mean-shift")
    with pytest.raises(ShapeError, match="anchor ids x labels"):
        tc.TextHead(["a", "b"], np.arange(3), np.zeros((3, 3), np.float32),
                    np.zeros(2, np.float32))
    head = tc.TextHead(["a", "b"], np.array([2, 5, 9]),
                       np.array([[1, 0], [0, 1], [1, 1]], np.float32), np.zeros(2, np.float32),
                       {"kind": "linear"}, np.array([0.0, 0.1, 0.0], np.float32))
    v = SparseBatch(np.array([[5, 7]]), np.array([[0.8, 0.6]], np.float32), np.zeros(1))
    # id 7 came after training: no weight; id 5 votes for 'b'
    assert head.scores(v, "text").tolist() == [[0.0, pytest.approx(0.8)]]
    with pytest.raises(ShapeError, match="one value per anchor id"):
        tc.TextHead(["a", "b"], np.arange(3), np.zeros((3, 2), np.float32),
                    np.zeros(2, np.float32), shift=np.zeros(2, np.float32))
    back = tc.TextHead.load(head.save(tmp_path / "h.npz"))
    assert back.labels == head.labels and back.meta == head.meta
    assert np.array_equal(back.shift, head.shift) and np.array_equal(back.weight, head.weight)
    with pytest.raises(InputError, match="train one"):
        tc.TextHead.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a head")
    with pytest.raises(InputError, match="unreadable"):
        tc.TextHead.load(tmp_path / "bad.npz")


def test_index_heads_classify_and_tag_items_at_ingest(encoders, sample_embeddings, tmp_path):
    from connectors.heads import check_head_name
    from connectors.index import Index
    from connectors.memory import MemoryStore

    img, txt, labels = sample_embeddings
    idx = Index.create(MemoryStore(), *encoders, k=16, p=8.0)
    idx.cache_dir = str(tmp_path)  # heads live beside the anchor copies
    idx.add_anchor_embeddings(img, txt, [AnchorPayload(f"a photo of a {lb}") for lb in labels])
    names = ["cat", "rocket", "motorcycle", "moon"]
    head, path = idx.train_text_classifier("things", names, mine_captions=True)
    assert path.is_file() and head.meta["anchor_version"] == idx.version
    keep = [i for i, lb in enumerate(labels) if lb in names]
    got, probs = idx.classify_with_head(img[keep], idx.text_head("things"))
    acc = np.mean([g == labels[i] for g, i in zip(got, keep)])
    assert acc >= 0.75, (got, [labels[i] for i in keep])
    # tagging at ingest: payload fields a filter can use
    idx.taggers["things"] = idx.text_head("things")
    recs, bad = idx.records(img[keep], "image", [f"p{i}" for i in keep], [{} for _ in keep])
    assert not bad and all(r.payload["tag_things"] in names for r in recs)
    assert all(0 < r.payload["tag_things_p"] <= 1 for r in recs)
    idx.write(recs)
    q, _, v = idx.query_vector(text="a cat")
    hits = idx.search_vectors(q, 50, {"tag_things": "cat"}, version=v)[0]
    assert hits and all(h.payload["tag_things"] == "cat" for h in hits)
    with pytest.raises(InputError, match="no classifier head 'nope'"):
        idx.text_head("nope")
    with pytest.raises(ConfigError, match="not allowed"):
        check_head_name("../evil")
