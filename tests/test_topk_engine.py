import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asif_index.errors import ConfigError, NonFiniteError, ShapeError, ZeroVectorError
from asif_index.engine import TopKEngine, cpu_has_fast_bf16, exact_topk_reference
from tests.conftest import unit_rows

PRECISIONS = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])


def fp32_bound(d: int) -> float:
    """How far two fp32 dot products of unit vectors in ``d`` dimensions, summed in different
    orders (another blocking, kernel or CPU's BLAS), may differ: each is within the engine's
    documented accumulation factor g_d of the exact value."""
    from asif_index.engine.bounds import accumulation_factor

    return 2 * accumulation_factor(d)


def assert_same_ranking(values, rows, ref_v, ref_i, d: int):
    """Results of two summation orders: values within :func:`fp32_bound`, the same members
    (ties within the bound aside) and the same order wherever neighbours are further apart
    than the bound. Members and ties are still compared exactly: only rounding is allowed."""
    bound = fp32_bound(d)
    assert_same_topk(values, rows, ref_v, ref_i, atol=bound)
    gap = np.abs(np.diff(ref_v, axis=1)) > 2 * bound
    clear = np.ones_like(ref_i, bool)
    clear[:, 1:] &= gap
    clear[:, :-1] &= gap
    np.testing.assert_array_equal(np.where(clear, rows, -1), np.where(clear, ref_i, -1))


def assert_same_topk(values, rows, ref_v, ref_i, atol=2e-6):
    """Identical top-k sets, ties aside: any differing member must tie the k-th value."""
    assert values.shape == ref_v.shape
    np.testing.assert_allclose(values, ref_v, atol=atol)
    for r in range(len(rows)):
        got, want = set(rows[r].tolist()), set(ref_i[r].tolist())
        if got != want:
            kth = ref_v[r, -1]
            for diff in got ^ want:
                pos = np.flatnonzero(np.append(rows[r], ref_i[r]) == diff)[0] % rows.shape[1]
                src = values if diff in got else ref_v
                assert abs(src[r, pos] - kth) <= atol, f"row {r}: anchor {diff} is not a tie"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n,d,k,b", [(5000, 64, 100, 37), (20000, 384, 800, 16), (300, 32, 800, 5)])
def test_matches_dense_reference(precision, n, d, k, b):
    rng = np.random.default_rng(n + d)
    a, q = unit_rows(rng, n, d), unit_rows(rng, b, d)
    eng = TopKEngine(a, precision=precision, device="cpu")
    v, i = eng.search(q, k)
    rv, ri = exact_topk_reference(q, a, k)
    assert_same_topk(v, i, rv, ri)
    assert eng.stats.fallback_rows == 0 or precision == "bf16"


def test_torch_path_matches_reference():
    """The exact fp32 torch kernel (any torch device; the fallback of the fused CUDA path),
    run on the CPU so CI checks its logic, with small blocks to exercise the merges."""
    rng = np.random.default_rng(3)
    a, q = unit_rows(rng, 3000, 48), unit_rows(rng, 9, 48)
    eng = TopKEngine(a, device="cpu", kernel="torch", anchor_block=512)
    v, i = eng.search(q, 200)
    rv, ri = exact_topk_reference(q, a, 200)
    assert_same_topk(v, i, rv, ri)


def test_block_sizes_do_not_change_results():
    """Memory-bounded blocking (tiny blocks, many merges) gives the unblocked result."""
    rng = np.random.default_rng(4)
    a, q = unit_rows(rng, 2000, 32), unit_rows(rng, 20, 32)
    big = TopKEngine(a, precision="fp32", device="cpu").search(q, 50)
    small = TopKEngine(a, precision="fp32", device="cpu", query_block=3, anchor_block=7).search(q, 50)
    # other blockings sum in another order: equal up to the fp32 bound (1 ulp on AMD EPYC)
    assert_same_ranking(small[0], small[1], big[0], big[1], 32)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_real_embeddings(precision, sample_embeddings):
    img, txt, _ = sample_embeddings
    for anchors, queries in ((img, img[::-1]), (txt, txt)):
        eng = TopKEngine(anchors, precision=precision, device="cpu")
        v, i = eng.search(queries, 10)
        rv, ri = exact_topk_reference(queries, anchors, 10)
        assert_same_topk(v, i, rv, ri)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 40),
    b=st.integers(1, 6),
    k=st.integers(1, 400),
    seed=st.integers(0, 2**16),
    precision=st.sampled_from(PRECISIONS),
)
def test_property_shapes_and_exactness(n, d, b, k, seed, precision):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)).astype(np.float32)
    a[np.linalg.norm(a, axis=1) == 0] = 1.0
    q = rng.standard_normal((b, d)).astype(np.float32)
    q[np.linalg.norm(q, axis=1) == 0] = 1.0
    v, i = TopKEngine(a, precision=precision, device="cpu").search(q, k)
    kk = min(k, n)
    assert v.shape == i.shape == (b, kk)
    assert v.dtype == np.float32 and i.dtype == np.int64
    assert np.all(np.diff(v, axis=1) <= 0), "values are sorted descending"
    assert all(len(set(r)) == kk for r in i.tolist()), "no anchor twice in a row"
    rv, ri = exact_topk_reference(q, a, k)
    assert_same_topk(v, i, rv, ri, atol=5e-6)


def test_k_one_and_k_at_least_n():
    rng = np.random.default_rng(5)
    a, q = unit_rows(rng, 50, 8), unit_rows(rng, 4, 8)
    eng = TopKEngine(a, device="cpu")
    v1, i1 = eng.search(q, 1)
    np.testing.assert_array_equal(i1[:, 0], np.argmax(q @ a.T, axis=1))
    v, i = eng.search(q, 10_000)
    assert i.shape == (4, 50)
    assert all(sorted(r) == list(range(50)) for r in i.tolist())


def test_duplicate_anchors_both_returned_ties_by_row():
    rng = np.random.default_rng(6)
    a = unit_rows(rng, 20, 8)
    a[7] = a[3]
    q = a[3:4]
    v, i = TopKEngine(a, precision="fp32", device="cpu").search(q, 2)
    assert i[0].tolist() == [3, 7]
    assert v[0, 0] == pytest.approx(1.0, abs=1e-6) and v[0, 0] == v[0, 1]


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(7)
    a = unit_rows(rng, 10, 4)
    eng = TopKEngine(a, device="cpu")
    with pytest.raises(ZeroVectorError, match=r"rows \[1\]"):
        eng.search(np.array([[1, 0, 0, 0], [0, 0, 0, 0]], np.float32), 3)
    with pytest.raises(NonFiniteError, match="NaN"):
        eng.search(np.array([[np.nan, 0, 0, 1]], np.float32), 3)
    with pytest.raises(NonFiniteError):
        eng.search(np.array([[np.inf, 0, 0, 1]], np.float32), 3)
    with pytest.raises(ShapeError, match="dimension 5 but the anchors have dimension 4"):
        eng.search(np.ones((2, 5), np.float32), 3)
    with pytest.raises(ConfigError, match="k must be"):
        eng.search(np.ones((2, 4), np.float32), 0)
    with pytest.raises(ZeroVectorError):
        TopKEngine(np.zeros((3, 4), np.float32))
    with pytest.raises(ShapeError):
        TopKEngine(np.zeros((0, 4), np.float32))
    with pytest.raises(ConfigError, match="precision"):
        TopKEngine(a, precision="int8")


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="CPU has no hardware bf16")
def test_bf16_certificate_falls_back_when_window_overflows():
    """Near-duplicate anchors make the bf16 window wider than the buffer: rows must fall
    back to fp32 and stay exact."""
    rng = np.random.default_rng(8)
    base = unit_rows(rng, 1, 64)
    a = base + 1e-4 * rng.standard_normal((3000, 64)).astype(np.float32)
    q = base + 1e-3 * rng.standard_normal((3, 64)).astype(np.float32)
    eng = TopKEngine(a, precision="bf16", device="cpu")
    v, i = eng.search(q, 40)
    rv, ri = exact_topk_reference(q, a, 40)
    assert_same_topk(v, i, rv, ri)
    assert eng.stats.fallback_rows == 3


def test_auto_precision_follows_the_measured_crossover():
    from asif_index.engine import AUTO_BF16_MIN_N

    rng = np.random.default_rng(10)
    small = TopKEngine(unit_rows(rng, 2000, 16), device="cpu")
    assert small.precision == "fp32", "few anchors: bf16 selection does not pay off"
    big = TopKEngine(unit_rows(rng, AUTO_BF16_MIN_N, 16), device="cpu")
    assert big.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")
    q = unit_rows(rng, 3, 16)
    for k in (50, 2000):  # k/N above 1% runs the fp32 scan inside an auto bf16 engine
        v, i = big.search(q, k)
        rv, ri = exact_topk_reference(q, big._kernel._a32_np, k)
        assert_same_topk(v, i, rv, ri)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ties_at_the_kth_value_go_to_the_lowest_anchor_id(precision):
    """Duplicate anchors (Flickr8k holds each image five times) tie exactly: the boundary of
    the top-k must follow one rule (the older, lower-id anchor wins), or an incremental update
    and a rebuild could keep different members."""
    from asif_index.engine import TopKEngine, exact_topk_reference

    rng = np.random.default_rng(5)
    base = rng.standard_normal((300, 16)).astype(np.float32)
    anchors = np.concatenate([base] * 5)  # every anchor five times
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    q = rng.standard_normal((64, 16)).astype(np.float32)
    for k in (7, 50, 333):
        eng = TopKEngine(anchors, precision=precision, device="cpu")
        _, idx = eng.search(q, k)
        _, ref = exact_topk_reference(q, anchors, k)
        assert np.array_equal(np.sort(idx, 1), np.sort(ref, 1)), k
