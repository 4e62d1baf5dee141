import numpy as np
import pytest

from asif_index.anchors import AnchorManifest, AnchorPayload, AnchorSet
from asif_index.errors import AnchorError, ConfigError, EncoderMismatchError, ShapeError
from asif_index.projection import project, relative_weights
from tests.conftest import unit_rows


def naive_relative(q, a, k, p):
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T
    out = np.zeros_like(sims)
    for r in range(len(q)):
        top = np.argsort(-sims[r])[:k]
        out[r, top] = np.maximum(sims[r, top], 0) ** p
        n = np.linalg.norm(out[r])
        out[r] = out[r] / n if n > 0 else out[r]
    return out


@pytest.mark.parametrize("k,p", [(5, 1.0), (40, 8.0), (100, 3.0)])
def test_project_equals_naive_dense(k, p):
    rng = np.random.default_rng(k)
    a, q = unit_rows(rng, 100, 16), unit_rows(rng, 7, 16)
    sb = project(q, a, k=k, p=p, device="cpu")
    dense = sb.to_csr(100).toarray()
    np.testing.assert_allclose(dense, naive_relative(q, a, k, p), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(dense, axis=1), 1.0, atol=1e-5)
    sims = q @ a.T
    np.testing.assert_allclose(sb.kth_similarity, np.sort(sims, axis=1)[:, -min(k, 100)], atol=1e-6)


def test_negative_similarities_clipped_and_all_negative_row_is_zero():
    w = relative_weights(np.array([[0.5, -0.2], [-0.1, -0.3]], np.float32), 2.0)
    assert w[0].tolist() == [1.0, 0.0]
    assert w[1].tolist() == [0.0, 0.0]


def test_ids_not_rows_and_csr_has_no_explicit_zeros():
    rng = np.random.default_rng(1)
    a = unit_rows(rng, 30, 8)
    ids = np.arange(1000, 1030)
    sb = project(a[:3], a, ids, k=30, p=8.0, device="cpu")
    assert sb.indices.min() >= 1000
    assert sb.indices[0, 0] == 1000  # a row's own anchor is its best match
    csr = sb.to_csr()
    assert (csr.data > 0).all()
    assert csr.shape[1] == 1030


def test_bad_k_p():
    rng = np.random.default_rng(2)
    a = unit_rows(rng, 10, 4)
    with pytest.raises(ConfigError):
        project(a, a, k=0)
    with pytest.raises(ConfigError):
        project(a, a, k=3, p=-1)
    with pytest.raises(AnchorError):
        project(a, a, np.arange(3), k=3)


def make_set(rng, n=20, di=6, dt=5):
    s = AnchorSet(AnchorManifest("img-enc", "txt-enc", di, dt, k=4, p=2.0))
    s.add(unit_rows(rng, n, di), unit_rows(rng, n, dt), [AnchorPayload(f"cap {i}") for i in range(n)])
    return s


def test_add_remove_keeps_ids_and_others(tmp_path):
    rng = np.random.default_rng(3)
    s = make_set(rng)
    v0 = s.version
    img_before = s.image[s.rows_of([5])].copy()
    new = s.add(unit_rows(rng, 3, 6), unit_rows(rng, 3, 5))
    assert new.tolist() == [20, 21, 22] and s.version == v0 + 1
    s.remove(np.array([0, 21]))
    assert s.version == v0 + 2 and len(s) == 21
    np.testing.assert_array_equal(s.image[s.rows_of([5])], img_before)
    assert 0 not in s.ids and 21 not in s.ids
    newer = s.add(unit_rows(rng, 1, 6), unit_rows(rng, 1, 5))
    assert newer.tolist() == [23], "removed ids are never reused"
    with pytest.raises(AnchorError, match="unknown anchor ids"):
        s.remove(np.array([0]))


def test_projection_follows_anchor_changes():
    rng = np.random.default_rng(4)
    s = make_set(rng)
    q = s.image[:2]
    before = s.project(q, "image")
    s.remove(s.ids[:1])
    after = s.project(q, "image")
    assert 0 in before.indices[0] and 0 not in after.indices[0]


def test_save_load_roundtrip_and_encoder_mismatch(tmp_path):
    rng = np.random.default_rng(5)
    s = make_set(rng)
    s.remove(s.ids[:2])
    s.save(tmp_path / "a")
    t = AnchorSet.load(tmp_path / "a", "img-enc", "txt-enc")
    np.testing.assert_array_equal(t.ids, s.ids)
    np.testing.assert_array_equal(t.text, s.text)
    assert t.payloads == s.payloads and t.version == s.version and t.next_id == s.next_id
    with pytest.raises(EncoderMismatchError, match="image encoder 'other'"):
        AnchorSet.load(tmp_path / "a", "other", "txt-enc")
    with pytest.raises(AnchorError, match="no anchor set"):
        AnchorSet.load(tmp_path / "missing")


def test_add_validation():
    rng = np.random.default_rng(6)
    s = make_set(rng)
    with pytest.raises(ShapeError, match="anchors are pairs"):
        s.add(unit_rows(rng, 2, 6), unit_rows(rng, 3, 5))
    with pytest.raises(ShapeError, match="dimension"):
        s.add(unit_rows(rng, 2, 7), unit_rows(rng, 2, 5))
    with pytest.raises(AnchorError):
        AnchorSet(AnchorManifest("a", "b", 2, 2)).engine("image")


def test_to_csr_does_not_mutate_the_batch():
    rng = np.random.default_rng(9)
    a = unit_rows(rng, 60, 8)
    sb = project(a[:5], a, k=20, p=8.0, device="cpu")
    idx, val = sb.indices.copy(), sb.values.copy()
    first = sb.to_csr(60).toarray()
    second = sb.to_csr(60).toarray()
    np.testing.assert_array_equal(sb.indices, idx)
    np.testing.assert_array_equal(sb.values, val)
    np.testing.assert_array_equal(first, second)
    dense = np.zeros((5, 60), np.float32)
    np.put_along_axis(dense, idx, val, 1)
    np.testing.assert_allclose(sb.dot(sb), dense @ dense.T, atol=1e-6)
