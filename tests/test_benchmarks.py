"""The benchmark commands run at tiny sizes and their checks hold (figures come from the
full-size runs recorded in docs/benchmarks.md, never from tests)."""

import json

import pytest


def test_topk_benchmark_agrees_with_faiss(tmp_path):
    pytest.importorskip("faiss")
    from benchmarks.topk import run

    res = run([3000], [32], [50], [1, 64], 1, tmp_path / "t.json")
    assert len(res["rows"]) == 2
    for row in res["rows"]:
        assert row["asif_fp32_agree"] > 0.999
        assert row.get("asif_bf16_agree", 1.0) > 0.999
        assert row["faiss_qps"] > 0 and row["asif_fp32_qps"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["markdown"].startswith("| N |")


def test_incremental_benchmark_is_exact(tmp_path):
    from benchmarks.incremental import main

    out = tmp_path / "i.json"
    main(["--items", "1500", "--anchors", "900", "--k", "40", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 4
    for row in doc["rows"]:
        assert row["exact_sample"] == 1.0 and row["max_weight_diff"] < 1e-4
    new_topic = [r for r in doc["rows"] if r["scenario"] == "new-topic"]
    spread = [r for r in doc["rows"] if r["scenario"] == "spread"]
    assert new_topic[0]["touched_share"] < spread[0]["touched_share"]


def test_report_builds_from_json(tmp_path):
    from benchmarks.report import main

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "pruning.json").write_text(json.dumps(
        {"machine": {"cpu": "x", "cores": 2}, "markdown": "| a |", "chosen": {"milvus": 100}}))
    main(["--runs", str(runs), "--out", str(tmp_path / "docs" / "b.md")])
    text = (tmp_path / "docs" / "b.md").read_text()
    assert "| a |" in text and "{'milvus': 100}" in text and "_Not run yet" in text


def test_gpu_topk_benchmark_runs_and_checks_exactness(tmp_path):
    """benchmarks.topk --device cuda, at tiny sizes on whatever this machine has (the Triton
    kernel under the interpreter without a GPU): the code that a GPU session runs once is
    checked here on every CI run."""
    import torch

    from benchmarks.topk_gpu import run

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    res = run([3000], [32], [50], [1, 20], 1, tmp_path / "g.json", device=dev, tflops_size=256)
    assert [r["batch"] for r in res["rows"]] == [1, 20]
    assert all(r["asif_exact"] and r["fallback"] == 0 for r in res["rows"])
    assert all(r["torch16_recall"] > 0.9 for r in res["rows"])
    assert any("exact top-k" in line and line.startswith("PASS") for line in res["targets"])


def test_service_load_benchmark_has_no_errors_and_no_mixed_versions(tmp_path):
    """benchmarks.service at tiny sizes: every request answered, including while an anchor
    update lands, each on the old or the new version."""
    import pytest

    pytest.importorskip("fastapi")
    from benchmarks.service import main

    rows = main(["--items", "800", "--anchors", "600", "--k", "40", "--seconds", "1.5",
                 "--clients", "1,4", "--engines", "qdrant-edge", "--out",
                 str(tmp_path / "s.json")])
    assert [r["phase"] for r in rows] == ["idle", "idle", "during update"]
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in rows)
    assert not rows[-1]["mixed"] and rows[-1]["update_s"] > 0
    # the server's own stage times, read from each answer's Server-Timing header
    for r in rows:
        stages = [r[f"{n}_p50_ms"] for n in ("encode", "project", "search")]
        assert all(v > 0 for v in stages) and r["server_p50_ms"] <= r["p50_ms"]


def test_gpu_stage_benchmarks_and_append_run_on_this_machine(tmp_path, monkeypatch):
    """The tile sweep, the per-stage benchmark and --append's merge, at tiny sizes (the
    interpreter without a GPU): what a lent GPU runs once is checked on every CI run."""
    import torch

    from benchmarks import select_kernels, topk_gpu

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(topk_gpu, "SWEEP_SINGLE", topk_gpu.SWEEP_SINGLE[:2])
    monkeypatch.setattr(topk_gpu, "SWEEP_BATCH", topk_gpu.SWEEP_BATCH[:2])
    rows = topk_gpu.tile_sweep(3000, 32, 50, [1, 40], 1, device=dev)
    assert len(rows) == 4 and all(r["same_rows"] for r in rows)
    monkeypatch.setattr(select_kernels, "SINGLE_SHAPES", select_kernels.SINGLE_SHAPES[:1])
    monkeypatch.setattr(select_kernels, "BATCH_SHAPES", select_kernels.BATCH_SHAPES[:1])
    res = select_kernels.run(3000, 32, 50, [1, 40], str(tmp_path / "s.json"), device=dev)
    variants = [r for r in res["rows"] if r["stage"].startswith("select")]
    assert len(variants) == 6 and all(r["same"] for r in variants)  # 3 epilogues x 2 batches
    out = tmp_path / "g.json"
    topk_gpu.run([2000], [16], [20], [1], 1, out, device=dev, tflops_size=128)
    merged = topk_gpu.run([2000], [16], [20], [4], 1, out, device=dev, tflops_size=128,
                          append=True)
    assert [r["batch"] for r in merged["rows"]] == [1, 4]


def test_distributed_cost_model_meets_each_target_with_the_fewest_nodes():
    """The 10^8-image model: each target's GPU and database node counts meet it, one node
    fewer of the bounding kind would not, and the GPU rate comes from the measured file."""
    from benchmarks.distributed_ingest import IMAGES, cost_model, gpu_projection_rate

    rates = {"decode_per_core": 800.0, "encode_cpu_2cores": 23.0,
             "write_embedded_qdrant": 2000.0}
    rows, src = cost_model(rates, gpu_encode_rate=5000.0, targets_h=(24, 6, 1))
    proj, where = gpu_projection_rate(10**6)
    assert src["gpu_projection_q_s"] == proj > 10_000 and "N=1e+06" in where
    per_gpu = min(5000.0, 800.0 * 8, proj)
    assert [r["gpu_bound_by"] for r in rows] == ["encode"] * 3
    for r in rows:
        need = IMAGES / (r["target_hours"] * 3600)
        assert r["hours_with_them"] <= r["target_hours"] + 1e-9
        assert r["gpu_nodes"] * per_gpu >= need > (r["gpu_nodes"] - 1) * per_gpu
        assert r["db_nodes"] * 2000.0 >= need > (r["db_nodes"] - 1) * 2000.0


def test_encode_rate_benchmark_measures_both_paths(tmp_path):
    """The per-GPU encode rate of the cost model, run here on the CPU: both paths measured,
    and the cost model takes a measured GPU figure over its assumption."""
    from benchmarks.distributed_ingest import ASSUMED_GPU_ENCODE, gpu_encode_rate
    from benchmarks.encode_rate import measure

    rows = measure("cpu", batch=4, seconds=0.2)
    assert [r["device"] for r in rows] == ["cpu", "cpu"]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert gpu_encode_rate(None, str(tmp_path / "none.json"))[0] == ASSUMED_GPU_ENCODE
    doc = {"machine": {"gpu": "NVIDIA H100"}, "rows": [
        {"device": "cuda:0", "images_per_s": 20000.0}, {"device": "cuda:0", "images_per_s": 9000.0}]}
    (tmp_path / "gpu.json").write_text(json.dumps(doc))
    assert gpu_encode_rate(None, str(tmp_path / "gpu.json")) == (9000.0, "measured (NVIDIA H100)")
    assert gpu_encode_rate(123.0)[0] == 123.0


def test_recipe_cost_encode_rate_leaves_out_and_restores_every_cache():
    """The encode rate is the model's, not the cache's: the encoder's and each ensemble
    member's cache are off while it is timed, and back after; a bad --configs is one line."""
    import pytest

    from benchmarks.recipe_cost import encode_rate, main

    seen = []

    class Enc:
        def __init__(self):
            self.cache = object()

        def encode(self, items):
            seen.append((len(items), self.cache, [m.cache for m, _ in self.members]))
            return items

    e = Enc()
    e.members = [(Enc(), 0.5), (Enc(), 0.5)]
    caches = [e.cache] + [m.cache for m, _ in e.members]
    assert encode_rate(e, list(range(200)), n=96) > 0
    assert seen[-1] == (96, None, [None, None]) and seen[0][0] == 8
    assert [e.cache] + [m.cache for m, _ in e.members] == caches
    with pytest.raises(SystemExit):
        main(["--configs", "light"])


def test_scale_cost_model_fits_power_laws_and_names_what_it_fitted(tmp_path):
    """benchmarks.scale_model: p50 = a N^b through the measured sizes, disk and build time
    from the largest run, and nothing fitted through runs of different first stages."""
    import math

    from benchmarks.scale_model import main, model

    base = {"engine": "qdrant-edge", "recipe": "tuned", "direction": "t2i"}
    rows = [{**base, "items": 10_000, "exact_p50_ms": 2.0, "default_p50_ms": 3.0,
             "candidate_keep": 0},
            {**base, "items": 100_000, "exact_p50_ms": 8.0, "default_p50_ms": 5.0,
             "candidate_keep": 128, "bytes_per_item": 50_000.0, "project_items_s": 1000.0,
             "write_items_s": 500.0, "fold_items_s": 1000.0}]
    out = {r["quantity"]: r for r in model(rows)}
    exact = out["exact p50"]
    assert exact["exponent"] == pytest.approx(math.log10(4))  # 4x per decade
    assert exact["at_1e6"] == pytest.approx(32.0) and exact["at_1e8"] == pytest.approx(512.0)
    assert exact["fitted_on"] == "10000,100000"
    assert "default p50" not in out  # two-stage at one size, single stage at the other
    assert out["disk"]["at_1e7"] == pytest.approx(500.0)  # GB
    assert out["project + fold + write"]["at_1e6"] == pytest.approx(4e6 * 1e-3 / 3600)
    p = tmp_path / "one.json"
    p.write_text(json.dumps({"rows": rows[:1]}))
    with pytest.raises(SystemExit, match="two sizes"):
        main([str(p), "--out", str(tmp_path / "m.json")])
    (tmp_path / "norows.json").write_text(json.dumps({"markdown": ""}))
    for bad in (tmp_path / "absent.json", tmp_path / "norows.json"):
        with pytest.raises(SystemExit, match=f"{bad.name}: not a benchmarks.scale result"):
            main([str(bad), "--out", str(tmp_path / "m2.json")])
