"""The fused Triton kernel and the torch kernel against the float64 reference.

Without a GPU the Triton kernel runs under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so the same kernel source is checked on every CI run; on a CUDA machine
these run on the GPU instead, and the ``cuda`` tests run too.
"""

import numpy as np
import pytest
import torch

from asif_index.engine import TopKEngine, exact_topk_reference
from asif_index.errors import ConfigError, NonFiniteError, ZeroVectorError
from tests.conftest import unit_rows
from tests.test_topk_engine import assert_same_ranking, assert_same_topk

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # "cpu" + kernel="triton" = the interpreter
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")


def triton_engine(a, **kw):
    return TopKEngine(a, device=DEVICE, kernel="triton", **kw)


@pytest.mark.parametrize("n,d,k,b", [(3000, 32, 20, 7), (6000, 64, 100, 5), (2000, 24, 1, 4),
                                     (4000, 48, 800, 3)])
def test_triton_matches_reference(n, d, k, b):
    rng = np.random.default_rng(n + k)
    a, q = unit_rows(rng, n, d), unit_rows(rng, b, d)
    eng = triton_engine(a)
    v, i = eng.search(q, k)
    rv, ri = exact_topk_reference(q, a, k)
    assert_same_topk(v, i, rv, ri)
    assert eng.stats.kernel == "triton" and eng.stats.rows == b
    # the sample threshold let through far fewer anchors than N: the selection did the work
    assert eng.stats.candidates_mean < n / 2 or 4 * k >= n


def test_three_kernels_return_identical_rows():
    """CPU scan, torch blocks and the fused kernel: same rows in the same order (ties by row)."""
    rng = np.random.default_rng(1)
    base = unit_rows(rng, 700, 32)
    a = np.concatenate([base, base[:300]])  # exact duplicates tie at every position
    q = unit_rows(rng, 6, 32)
    outs = [TopKEngine(a, device="cpu", kernel="cpu", precision="fp32").search(q, 90),
            TopKEngine(a, device=DEVICE, kernel="torch", anchor_block=77).search(q, 90),
            triton_engine(a).search(q, 90)]
    for v, i in outs[1:]:
        assert_same_ranking(v, i, *outs[0], 32)
        # exact duplicates tie inside each kernel, so the lower row comes first in every one
        for r in range(len(i)):
            pos = {int(x): j for j, x in enumerate(i[r])}
            for x in range(300):
                if x in pos and x + 700 in pos:
                    assert pos[x] < pos[x + 700]


def test_ties_at_the_boundary_keep_the_lowest_rows():
    rng = np.random.default_rng(2)
    base = unit_rows(rng, 200, 16)
    a = np.concatenate([base] * 5)
    q = unit_rows(rng, 8, 16)
    for k in (1, 7, 333):
        _, i = triton_engine(a).search(q, k)
        _, ref = exact_topk_reference(q, a, k)
        assert np.array_equal(np.sort(i, 1), np.sort(ref, 1)), k


def test_near_duplicates_overflow_the_buffer_and_fall_back_exactly():
    """Thousands of anchors within fp16 resolution of the query all pass the threshold: the
    candidate buffer overflows, the rows cannot be certified, and are recomputed in fp32."""
    rng = np.random.default_rng(3)
    centre = unit_rows(rng, 1, 64)
    a = np.concatenate([centre + 1e-4 * rng.standard_normal((3000, 64)).astype(np.float32),
                        unit_rows(rng, 3000, 64)])
    q = centre + 1e-3 * rng.standard_normal((3, 64)).astype(np.float32)
    eng = triton_engine(a)
    v, i = eng.search(q, 10)
    rv, ri = exact_topk_reference(q, a, 10)
    assert_same_topk(v, i, rv, ri)
    assert eng.stats.fallback_rows == 3
    assert eng.stats.candidates_mean > eng._kernel.plan(10).cap


def test_k_at_least_n_k_one_and_one_anchor():
    rng = np.random.default_rng(4)
    a, q = unit_rows(rng, 50, 8), unit_rows(rng, 4, 8)
    eng = triton_engine(a)
    v, i = eng.search(q, 10_000)
    assert i.shape == (4, 50) and all(sorted(r) == list(range(50)) for r in i.tolist())
    _, i1 = eng.search(q, 1)
    np.testing.assert_array_equal(i1[:, 0], np.argmax(q @ a.T, axis=1))
    v, i = triton_engine(a[:1]).search(q, 5)
    assert i.shape == (4, 1) and (i == 0).all()
    np.testing.assert_allclose(v[:, 0], (q @ a[0]) / np.linalg.norm(a[0]), atol=1e-6)


def test_bad_inputs_rejected_on_the_device():
    rng = np.random.default_rng(5)
    eng = triton_engine(unit_rows(rng, 100, 8))
    bad = torch.ones((3, 8))
    bad[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"rows \[1\]"):
        eng.search(bad.to(DEVICE), 5)
    with pytest.raises(ZeroVectorError, match=r"rows \[0\]"):
        eng.search(torch.zeros((1, 8), device=DEVICE), 5)
    with pytest.raises(ConfigError, match="fp16"):
        TopKEngine(unit_rows(rng, 10, 8), device=DEVICE, kernel="triton", precision="bf16")


def test_memory_budget_splits_any_batch_without_changing_results():
    rng = np.random.default_rng(6)
    a, q = unit_rows(rng, 3000, 32), unit_rows(rng, 40, 32)
    big = triton_engine(a).search(q, 50)
    tiny = triton_engine(a, memory_budget_mb=0.05)  # a few rows per chunk
    per_row = tiny._kernel.plan(50).cap * 24
    assert tiny._kernel.budget // per_row < 40, "the budget must force several chunks"
    small = tiny.search(q, 50)
    assert_same_ranking(small[0], small[1], big[0], big[1], 32)


def test_tensors_stay_on_the_device_and_project_once():
    """Tensor in, tensor out on the engine's device; ``project`` of a tensor equals the numpy
    path entry for entry."""
    from asif_index.projection import project

    rng = np.random.default_rng(7)
    a, q = unit_rows(rng, 2000, 32), unit_rows(rng, 5, 32)
    eng = triton_engine(a)
    v, i = eng.search(torch.from_numpy(q).to(DEVICE), 30)
    assert isinstance(v, torch.Tensor) and v.device.type == DEVICE and i.dtype == torch.int64
    ids = np.arange(10_000, 12_000)
    from_tensor = project(torch.from_numpy(q).to(DEVICE), eng, ids, k=30, p=8.0)
    from_numpy = project(q, eng, ids, k=30, p=8.0)
    np.testing.assert_array_equal(from_tensor.indices, from_numpy.indices)
    np.testing.assert_allclose(from_tensor.values, from_numpy.values, atol=1e-6)


def test_triton_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if CUDA:
        pytest.skip("CUDA present: the Triton kernel can run")
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        TopKEngine(unit_rows(np.random.default_rng(0), 10, 8), device="cpu", kernel="triton")


@needs_cuda
def test_cuda_auto_picks_the_fused_kernel_and_is_exact_at_scale():
    rng = np.random.default_rng(8)
    a, q = unit_rows(rng, 200_000, 384), unit_rows(rng, 256, 384)
    eng = TopKEngine(a, device="cuda")
    assert eng.kernel_name == "triton" and eng.precision == "fp16"
    v, i = eng.search(q, 800)
    rv, ri = exact_topk_reference(q, a, 800)
    assert_same_topk(v, i, rv, ri)
    assert eng.stats.fallback_rows <= 2, "random data should almost never need the fallback"


@pytest.mark.parametrize("d", [64, 40])  # EVEN_K main loop, and the masked one
def test_both_epilogues_and_edge_tiles_select_the_same_rows(d):
    """The per-row scan and the per-entry atomic epilogues place candidates differently but
    must return identical results, also when B and N are not multiples of the tile (edge
    tiles read wrapped-around rows and must drop them)."""
    from asif_index.engine import Tiles

    rng = np.random.default_rng(9)
    a, q = unit_rows(rng, 3001, d), unit_rows(rng, 37, d)
    rv, ri = exact_topk_reference(q, a, 40)
    outs = []
    for epi in ("scan", "atomic"):
        eng = triton_engine(a, tiles=Tiles(32, 64, 32, group_m=2, epilogue=epi))
        v, i = eng.search(q, 40)
        assert_same_topk(v, i, rv, ri)
        outs.append((v, i, eng.stats.candidates_mean))
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2], "both epilogues must count the same candidates"
    with pytest.raises(ConfigError, match="epilogue"):
        Tiles(16, 64, 32, epilogue="fast")


@needs_cuda
def test_small_batches_replay_a_graph_with_the_eager_results():
    """b <= 64 on CUDA runs as a captured graph: the same rows and values as the eager path
    for fresh queries on every replay, across k and batch sizes, fallback rows included."""
    rng = np.random.default_rng(10)
    a = unit_rows(rng, 50_000, 128)
    graph, eager = TopKEngine(a, device="cuda"), TopKEngine(a, device="cuda")
    eager._kernel.use_graphs = False
    for b, k in ((1, 50), (64, 10), (1, 800), (1, 800), (5, 800), (5, 800)):
        q = torch.from_numpy(unit_rows(rng, b, 128)).cuda()
        gv, gi = graph.search(q, k)
        ev, ei = eager.search(q, k)
        assert torch.equal(gi, ei) and torch.equal(gv, ev), (b, k)
        assert graph.stats.candidates_mean == eager.stats.candidates_mean
    assert graph._kernel._graph_failed is None, graph._kernel._graph_failed
    # a new k changes the threshold sample, which drops the graphs that read the old one
    assert set(graph._kernel._graphs) == {(1, 800), (5, 800)}
    centre = a[:1]  # near-duplicates of one anchor overflow the buffer: the fallback path
    dup = TopKEngine(np.concatenate([centre + 1e-4 * rng.standard_normal((3000, 128))
                                     .astype(np.float32), a]), device="cuda")
    v, i = dup.search(centre, 10)
    assert dup.stats.fallback_rows == 1 and dup._kernel._graph_failed is None
    rv, ri = exact_topk_reference(centre, dup._kernel.a32.cpu().numpy(), 10)
    assert_same_topk(v, i, rv, ri)
