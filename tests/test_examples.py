"""The examples run end to end on the bundled sample and show what they claim."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
pytest.importorskip("fastapi", reason="the examples use the service ([serve] extra)")


@pytest.mark.parametrize("backend", ["qdrant", "milvus"])
def test_database_search(backend, tmp_path):
    pytest.importorskip("qdrant_edge" if backend == "qdrant" else "milvus_lite")
    from connectors import close_embedded
    from examples.database_search import main

    path = tmp_path / ("q" if backend == "qdrant" else "m.db")
    out = main(["--backend", backend, "--path", str(path), "--images", str(tmp_path / "img")])
    close_embedded()
    assert out["http_equals_python"]
    assert sum(out["found"].values()) >= 7, out["found"]  # of 13 labels; chance is 1 in 14


def test_incremental_anchors(tmp_path):
    from examples.incremental_anchors import NEW_DOMAIN, main

    out = main(["--images", str(tmp_path / "img")])
    for lab in NEW_DOMAIN:
        assert out["after"][lab] <= out["before"][lab], lab
    assert sum(out["after"][lab] for lab in NEW_DOMAIN) < sum(out["before"][lab]
                                                             for lab in NEW_DOMAIN)
    old = [lab for lab in out["before"] if lab not in NEW_DOMAIN]
    assert sum(out["after"][lab] == 1 for lab in old) >= sum(out["before"][lab] == 1
                                                             for lab in old) - 1


def test_enterprise_service(tmp_path):
    from examples.enterprise_service import main

    out = main(["--images", str(tmp_path / "img")])
    assert out["refused"] == 403
    assert out["job"]["state"] == "done" and out["job"]["result"]["new"] == 14
    assert out["filtered"] and {h["payload"]["label"] for h in out["filtered"]} == {"coins"}


@pytest.mark.parametrize("name", ["llamaindex_retriever", "langchain_retriever"])
def test_framework_retrievers(name, tmp_path):
    pytest.importorskip("qdrant_edge")
    pytest.importorskip("llama_index.core" if name.startswith("llama") else "langchain_core")
    import importlib

    from connectors import close_embedded

    out = importlib.import_module(f"examples.{name}").main(
        ["--path", str(tmp_path / "db"), "--images", str(tmp_path / "img")])
    close_embedded()
    assert out["ids"] == out["search_ids"] and len(out["ids"]) == 5  # Index.search's top-5
    assert out["by_photo"] == out["by_photo_search"]
    assert out["filtered"] and all(m["shelf"] >= 1 for m in out["filtered"])
