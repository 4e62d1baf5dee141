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
