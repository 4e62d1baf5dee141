"""Encoder matching (asif_index.methods.encoder_match) on synthetic data whose answer is known,
and the report-page sections each command writes."""

import numpy as np
import pytest

from asif_index.errors import ConfigError, ShapeError
from asif_index.evaluation import keep_sections, sections_of, write_section
from asif_index.methods.encoder_match import (
    diagnose,
    linear_cka,
    match_unpaired,
    matching_accuracy,
    mutual_knn,
    rbf_cka,
)


def related(n, seed=0, noise=0.05, d_i=48, d_t=24, clusters=12):
    """Pairs from a shared latent: images and texts are different random linear maps of it,
    so the two spaces share structure without sharing coordinates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, 16))
    z = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, 16))
    img = z @ rng.standard_normal((16, d_i)) + noise * rng.standard_normal((n, d_i))
    txt = z @ rng.standard_normal((16, d_t)) + noise * rng.standard_normal((n, d_t))
    return img.astype(np.float32), txt.astype(np.float32)


def test_cka_is_one_for_a_rotation_and_low_for_unrelated_rows():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 20))
    q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert rbf_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, rng.standard_normal((300, 20))) < 0.15
    assert mutual_knn(x, x @ q, 5) == pytest.approx(1.0)
    assert mutual_knn(x, rng.standard_normal((300, 20)), 5) < 0.1


def test_diagnose_tells_related_pairs_from_shuffled_ones():
    img, txt = related(600)
    good = diagnose(img, txt, sample=400)
    assert good.usable and good.verdict.startswith("usable")
    assert good.cka_z > 5 and good.mutual_knn > 3 * good.shuffled_mutual_knn
    curve = [r["t2i_R@10"] for r in good.retrieval]
    assert curve[-1] > 3 * good.retrieval[-1]["chance"] and curve[-1] >= curve[0]
    assert good.anchors_needed in [r["anchors"] for r in good.retrieval]
    bad = diagnose(img, txt[np.random.default_rng(2).permutation(600)], sample=400, curve=False)
    assert not bad.usable and bad.verdict.startswith("unusable") and abs(bad.cka_z) < 5


def test_bad_pairs_are_refused_by_name():
    with pytest.raises(ShapeError, match="row i of each"):
        diagnose(np.ones((10, 3)), np.ones((9, 3)))
    with pytest.raises(ShapeError, match="NaN"):
        linear_cka(np.full((10, 3), np.nan), np.ones((10, 3)))
    img, txt = related(40)
    with pytest.raises(ConfigError, match="method must be one of"):
        match_unpaired(img[:10], txt[:10], img[10:], txt[10:], "hungarian")
    with pytest.raises(ShapeError, match="same encoders"):
        match_unpaired(img[:10], txt[:10, :5], img[10:], txt[10:], "qap")


@pytest.mark.parametrize("method", ["qap", "local-cka", "asif-lap"])
def test_unpaired_matching_recovers_a_shuffled_pairing(method):
    img, txt = related(140, seed=3, noise=0.01)
    rows = matching_accuracy(img[:40], txt[:40], img[40:], txt[40:], [method], seed=4)
    assert rows[0]["accuracy"] >= 0.8, rows  # chance: 2.5%
    got = match_unpaired(img[:40], txt[:40], img[40:], txt[40:], method)
    assert sorted(got.tolist()) == list(range(40)), "a permutation of the captions"


def test_report_sections_are_replaced_in_place_and_kept_by_other_writers(tmp_path):
    page = tmp_path / "evaluation.md"
    page.write_text("# Evaluation\n\ngrid\n")
    write_section(page, "doctor", "## doctor\nv1")
    write_section(page, "match", "## match\nm1")
    write_section(page, "doctor", "## doctor\nv2")
    text = page.read_text()
    assert text.count("## doctor") == 1 and "v2" in text and "v1" not in text
    assert text.index("grid") < text.index("v2") < text.index("m1")
    assert set(sections_of(text)) == {"doctor", "match"}
    renewed = keep_sections("# Evaluation\n\nnew grid\n", text)  # what evaluate --docs writes
    assert "new grid" in renewed and "v2" in renewed and "m1" in renewed and "\ngrid" not in renewed


def test_local_cka_rewards_a_candidate_whose_neighbourhood_agrees_with_the_query():
    from asif_index.methods.encoder_match import local_cka_scores, rerank_local_cka

    rng = np.random.default_rng(3)
    sims = rng.uniform(0, 1, 200)  # the query's cosines to 200 anchors (ids 1000 + row)
    ids = np.arange(200) + 1000
    strongest = np.argsort(-sims)[:40]
    agree = (ids[strongest], sims[strongest] ** 8)  # same ordering of the same anchors
    disagree = (ids[strongest], sims[strongest][::-1] ** 8)
    flat = (ids[:2], np.array([0.5, 0.5]))  # too few anchors to say anything
    got = local_cka_scores(sims, lambda a: a - 1000, [agree, disagree, flat], p=8, m=30)
    assert got[0] == pytest.approx(1.0) and got[1] < 0 and got[2] == 0
    # weight 0 keeps the database order; a large weight puts the agreeing candidate first
    assert rerank_local_cka(np.array([0.5, 0.6, 0.1]), got, 0.0).tolist() == [1, 0, 2]
    assert rerank_local_cka(np.array([0.5, 0.6, 0.1]), got, 1.0)[0] == 0
    with pytest.raises(ShapeError):
        local_cka_scores(np.zeros((2, 2)), lambda a: a, [agree], p=8)
