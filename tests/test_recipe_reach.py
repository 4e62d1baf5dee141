"""Every entry point that projects uses the index's recipe, side by side (image k, text p):
classification through the Python API, the CLI and the service, on a tuned-style index,
equals the exact per-side projection and not the manifest's k, p."""

import numpy as np
import pytest

from asif_index.recipe import Recipe
from asif_index.search import prompts, template_scores
from connectors.index import Index
from connectors.memory import MemoryStore

# the tuned recipe's shape at test scale: a wider image side, a softer text side
RECIPE = Recipe(k_image=28, p_text=4.0)


@pytest.fixture(scope="module")
def tuned(encoders, sample_embeddings):
    img, txt, labels = sample_embeddings
    idx = Index.create(MemoryStore("r"), *encoders, k=10, p=8.0, recipe=RECIPE)
    from asif_index.anchors import AnchorPayload

    idx.add_anchor_embeddings(img[:30], txt[:30], [AnchorPayload(f"c{i}") for i in range(30)])
    return idx, img[30:], labels


LABELS = ["a dog", "a car", "a flower", "a building"]


def test_classify_embeddings_projects_each_side_by_the_recipe(tuned, encoders):
    idx, img, _ = tuned
    assert idx.anchors.kp("image") == (28, 8.0) and idx.anchors.kp("text") == (10, 4.0)
    pred, scores = idx.classify_embeddings(img, LABELS)
    ptxt = encoders[1].encode(prompts(LABELS))
    exact = template_scores(idx.anchors, img, ptxt, len(LABELS), 3).mean(2)
    np.testing.assert_allclose(scores, exact, atol=1e-6)
    manifest_kp = template_scores(idx.anchors, img, ptxt, len(LABELS), 3, 10, 8.0).mean(2)
    assert np.abs(scores - manifest_kp).max() > 1e-3, "the manifest's k, p must not win"
    assert [LABELS[i] for i in exact.argmax(1)] == pred


def test_service_classify_follows_the_recipe(tuned, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from asif_index.sample_data import sample_pairs
    from connectors.service import ServiceSettings, create_app

    idx, img, _ = tuned
    arrays, _, _ = sample_pairs()
    files = []
    for i, a in enumerate(arrays[30:34]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(a).save(p)
        files.append(("files", (p.name, p.read_bytes(), "image/png")))
    client = TestClient(create_app(idx, ServiceSettings(read_keys=["r"], admin_keys=["a"])))
    r = client.post("/classify", files=files, data={"labels": ",".join(LABELS)},
                    headers={"X-API-Key": "r"})
    assert r.status_code == 200, r.text
    got = [x["label"] for x in r.json()["predictions"]]
    want, _ = idx.classify([tmp_path / f"{i}.png" for i in range(4)], LABELS)
    assert got == want
