import json

import numpy as np
import pytest

from asif_index.anchors import AnchorManifest, AnchorSet
from asif_cli.main import main
from asif_index.errors import ConfigError
from asif_index.search import ExactIndex, prompts, rank, recall_at, zero_shot_classify
from asif_index.sparse import SparseBatch


def test_rank_orders_by_score_then_position():
    q = SparseBatch(np.array([[0, 1]]), np.array([[1.0, 0.0]], np.float32), np.zeros(1, np.float32))
    items = SparseBatch(
        np.array([[0, 1], [1, 2], [0, 2]]),
        np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.1]], np.float32),
        np.zeros(3, np.float32),
    )
    s, o = rank(q, items, 3)
    assert o[0].tolist() == [0, 2, 1]
    assert s[0].tolist() == [0.5, 0.5, 0.0]


def test_recall_at():
    r = recall_at(np.array([[3, 1, 2], [0, 1, 2]]), [{1}, {5}], ks=(1, 2))
    assert r == {"R@1": 0.0, "R@2": 0.5}


def test_prompts_validation():
    assert prompts(["cat"], ["a {}", "the {}"]) == ["a cat", "the cat"]
    with pytest.raises(ConfigError):
        prompts(["cat"], ["no slot"])


def test_cross_modal_search_and_zero_shot_on_real_embeddings(sample_embeddings, encoders):
    img, txt, labels = sample_embeddings
    _, txt_enc = encoders
    s = AnchorSet(AnchorManifest("i", "t", img.shape[1], txt.shape[1], k=20, p=8.0))
    # anchors: two of the three views of each photo; items: the third (held out)
    anchor_rows = [i for i in range(len(labels)) if i % 3 != 2]
    held = [i for i in range(len(labels)) if i % 3 == 2]
    s.add(img[anchor_rows], txt[anchor_rows])
    idx = ExactIndex(s)
    idx.add(img[held], "image")
    q = txt_enc.encode([f"a photo of {labels[h]}" for h in held])
    _, order = idx.search(q, "text", limit=3)
    hits = np.mean([held.index(h) in order[n].tolist() for n, h in enumerate(held)])
    assert hits >= 0.5, f"text->held-out image R@3 {hits}"
    classes = sorted(set(labels))
    ptxt = txt_enc.encode(prompts(classes))
    for red in ("mean", "max"):
        pred, scores = zero_shot_classify(s, img[held], ptxt, len(classes), 3, red)
        acc = np.mean([classes[p] == labels[h] for p, h in zip(pred, held)])
        assert scores.shape == (len(held), len(classes))
        assert acc > 3 / len(classes), f"{red}: accuracy {acc} not above chance"


def test_cli_demo_runs_on_bundled_sample(tmp_path, capsys):
    rc = main(["demo", "--cache-dir", str(tmp_path), "--k", "20", "--save", str(tmp_path / "a"),
               "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert rc == 0
    # anchors and searched images never overlap: 28 anchors, 14 held out
    assert "28 anchor pairs from 28 images" in out and "14 other images held out" in out
    import re

    acc = float(re.search(r"accuracy ([0-9.]+) \(chance 0.077\)", out).group(1))
    r1 = float(re.search(r"R@1 ([0-9.]+) for 14 captions \(chance 0.071\)", out).group(1))
    assert acc > 0.5 and r1 > 0.5, out  # far above chance on images the anchors never saw
    page = (tmp_path / "demo" / "index.html").read_text()
    assert page.count("<img") == 12 and "a photo of cat" in page
    assert (tmp_path / "a" / "manifest.json").is_file()


def test_cli_demo_on_a_captions_table_skips_corrupt(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = ["image\tcaption"]
    for i, c in enumerate(["red square", "blue square", "green square"]):
        arr = np.zeros((32, 32, 3), np.uint8)
        arr[..., i] = 255
        Image.fromarray(arr).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"{i}.png\t{c}")
    (tmp_path / "img" / "bad.png").write_bytes(b"broken")
    rows.append("bad.png\tbroken file")
    (tmp_path / "caps.tsv").write_text("\n".join(rows) + "\n")
    rc = main(["demo", "--captions", str(tmp_path / "caps.tsv"), "--images", str(tmp_path / "img"),
               "--cache-dir", str(tmp_path / "c"), "--k", "3", "--query", "red",
               "--out", str(tmp_path / "demo")])
    cap = capsys.readouterr()
    assert rc == 0 and "2 anchor pairs from 2 images" in cap.out
    assert "accuracy not measured: the images have no classes" in cap.out
    assert "bad.png" in cap.err and "cannot be decoded" in cap.err


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    rc = main(["demo", "--captions", str(tmp_path / "none.csv"), "--cache-dir", str(tmp_path)])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluation_on_a_slice_of_real_data(data_dir, encoders, tmp_path):
    from asif_index.evaluation import load_eval_data, run_evaluation, write_report

    img_enc, txt_enc = encoders
    d = load_eval_data(data_dir, img_enc, txt_enc, limit_anchor_images=60, limit_cifar=60,
                       limit_dev_images=20, log=lambda *_: None)
    assert len(d.anchors) == 300  # 60 images x 5 captions
    import dataclasses

    from asif_index.recipe import TUNED, Recipe

    res = run_evaluation(d, txt_enc, ks=(50, 800), ps=(8.0,), log=lambda *_: None,
                         recipes=(Recipe(), Recipe(center=True)),
                         extra_points=[(Recipe(p_image=2.0), 800, 8.0),
                                       (Recipe(), 800, 8.0, True), (TUNED, 800, 8.0),
                                       (dataclasses.replace(TUNED, qbnorm=None), 800, 8.0),
                                       (dataclasses.replace(TUNED, hub=10.0), 800, 8.0)])
    assert res["default"]["k"] == 300 and res["default"]["recipe"] == "asif"  # k capped at N
    assert res["chosen"]["recipe"] == "tuned" and res["chosen"]["k"] == 300
    assert res["configurations"] == 9
    assert [g["recipe"] for g in res["grid"]] == ["asif"] * 2 + ["centered"] * 2 + \
        ["image(k=-,p=2.0)", "asif /grouped", "tuned", "image(k=3200,p=-)+text(k=-,p=4.0)",
         "image(k=3200,p=-)+text(k=-,p=4.0)+hub(beta=10)+qbnorm(T=0.05)"]
    # hub weights change every projection: zero-shot and retrieval both move
    hub = res["grid"][8]
    assert hub["cifar10_acc_mean"] != res["grid"][6]["cifar10_acc_mean"] or \
        hub["t2i_R@10"] != res["grid"][6]["t2i_R@10"]
    # the tuned recipe's re-ranking moves retrieval only, never CIFAR-10
    tuned, unranked = res["grid"][6:8]
    assert tuned["cifar10_acc_mean"] == unranked["cifar10_acc_mean"]
    assert (tuned["t2i_R@1"], tuned["t2i_R@5"], tuned["i2t_R@1"], tuned["i2t_R@5"]) != \
        (unranked["t2i_R@1"], unranked["t2i_R@5"], unranked["i2t_R@1"], unranked["i2t_R@5"])
    assert res["grid"][5]["anchors"] == 60 and res["grid"][5]["k"] == 60  # one per image
    for g in res["grid"]:
        assert 0.0 <= g["cifar10_acc_mean"] <= 1.0
        assert g["t2i_R@1"] <= g["t2i_R@5"] <= g["t2i_R@10"]
        assert g["score"] == pytest.approx(g["cifar10_acc_mean"] + (g["t2i_R@10"] + g["i2t_R@10"]) / 2)
    # chosen on the select half only; each half is a real part of the whole
    assert res["best"]["select"]["score"] == max(g["select"]["score"] for g in res["grid"])
    img_half = d.dev_half()
    cap_half = img_half[d.dev_txt_img]
    assert 0 < img_half.sum() < len(img_half) and set(np.unique(d.cifar_half())) == {0, 1}
    for g in res["grid"]:
        for key, half in (("t2i_R@10", cap_half), ("i2t_R@10", img_half),
                          ("cifar10_acc_mean", d.cifar_half())):
            n1 = int(half.sum())
            whole = (g["select"][key] * (len(half) - n1) + g["confirm"][key] * n1) / len(half)
            assert g[key] == pytest.approx(whole, abs=1e-9), key
    # the variants are different projections, not relabelled copies of the published one
    plain, centred = res["grid"][1], res["grid"][3]
    assert (plain["cifar10_acc_mean"], plain["t2i_R@10"], plain["i2t_R@10"]) != \
        (centred["cifar10_acc_mean"], centred["t2i_R@10"], centred["i2t_R@10"])
    j, m = write_report(res, tmp_path)
    assert json.loads(j.read_text())["anchors"] == 300
    text = m.read_text()
    assert "| asif (published) | 300 | 8 |" in text and "| centered | 300 | 8 |" in text
    assert "| tuned **(default)** | 300 | 8 |" in text
    assert "Best by the select half's score:" in text and "9 configurations" in text
    assert "**Default recipe: `tuned`**" in text
    # evaluate-qbnorm's grid on the same slice: each temperature beside the plain ranking,
    # cross-modal and same-modality recall, CIFAR-10 untouched
    from asif_index.reports import qbnorm_markdown
    from asif_index.evaluation import qbnorm_grid

    rows = qbnorm_grid(d, txt_enc, [(dataclasses.replace(TUNED, qbnorm=None), 800, 8.0)],
                       [0.05], log=lambda *_: None)
    assert [r["temperature"] for r in rows] == [None, 0.05]
    assert rows[0]["cifar10"] == rows[1]["cifar10"] == unranked["cifar10_acc_mean"]
    assert rows[1]["t2i_R@10"] == pytest.approx(tuned["t2i_R@10"])  # the exact path, twice
    for r in rows:
        assert 0 <= r["t2t_R@10"] <= 1 and 0 <= r["i2i_R@10"] <= 1
    md = qbnorm_markdown({"command": "x", "rows": rows, "anchors": 300, "cifar": 60,
                          "dev_images": 20, "dev_captions": 100})
    assert "| T2T R@10 | I2I R@10 |" in md
    # the same-modality cost is stated when the best row is a re-ranked one
    best = max(rows, key=lambda r: r["score"])
    assert ("same-modality search by T2T R@10" in md) == (best["temperature"] is not None)
