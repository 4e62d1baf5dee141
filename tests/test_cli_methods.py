"""The method commands end to end on a tiny data folder laid out like ../shared/data: colour
photos with captions (flickr8k/) and colour classes (cifar10-test/). Each command must write
its own section of a report page, keep the others, and measure above chance."""

import json

import numpy as np
import pytest
from PIL import Image

from asif_cli.main import main
from asif_index.evaluation import sections_of

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220),
           "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    fl = root / "flickr8k"
    (fl / "images").mkdir(parents=True)
    rows = ["image\tsplit\tcaption_index\tcaption"]
    rng = np.random.default_rng(0)
    for n in range(24):
        name = list(COLOURS)[n % 4]
        a = np.full((64, 64, 3), 30, np.uint8)
        s = int(rng.integers(2, 12))
        a[s:64 - s, s:64 - s] = COLOURS[name]
        Image.fromarray(a).save(fl / "images" / f"{n}.jpg")
        split = "dev" if n >= 16 else "train"
        for c, tmpl in enumerate(("a {} square", "a {} box", "{} colour", "the {} block",
                                  "something {}")):
            rows.append(f"{n}.jpg\t{split}\t{c}\t{tmpl.format(name)}")
    (fl / "captions.tsv").write_text("\n".join(rows) + "\n")
    for name, rgb in COLOURS.items():
        d = root / "cifar10-test" / name
        d.mkdir(parents=True)
        for i in range(3):
            a = np.full((32, 32, 3), 30, np.uint8)
            a[4 + i:28 - i, 4 + i:28 - i] = rgb
            Image.fromarray(a).save(d / f"{i:04d}.jpg")
    return root


def test_method_commands_write_their_sections(data, tmp_path, capsys):
    page = tmp_path / "evaluation.md"
    page.write_text("# Evaluation\n\n<!-- section:doctor -->\nkept\n<!-- /section:doctor -->\n")
    common = ["--data", str(data), "--cache-dir", str(tmp_path / "cache")]
    assert main(["evaluate-unified", *common, "--no-pointing", "--queries", "8", "--docs",
                 str(page), "--json", "--k", "10", "--p", "4"]) == 0
    first = capsys.readouterr().out
    found = json.loads(first[first.index("\n{") + 1:])
    assert found["photos"] == 8 and found["captions"] == 40 and found["anchors"] == 80
    assert 0 <= found["gap"]["image_nn_is_text"] <= 1
    assert main(["evaluate-text-classifier", *common, "--noise", "0,0.08", "--kinds",
                 "centroid", "--no-mean-shift", "--draws", "2", "--docs", str(page),
                 "--k", "10", "--p", "4"]) == 0
    assert main(["evaluate-rerank", *common, "--queries", "20", "--m", "10", "--weights",
                 "0.02", "--docs", str(page)]) == 0
    out = first + capsys.readouterr().out
    secs = sections_of(page.read_text())
    assert set(secs) == {"doctor", "unified", "text-classifier", "rerank"}
    assert "kept" in secs["doctor"]
    assert "| T2I |" in secs["unified"] and "Composed queries" in secs["unified"]
    assert "Prompt zero-shot" in secs["text-classifier"] and "| centroid |" in secs[
        "text-classifier"]
    assert "plain database ranking" in secs["rerank"]
    # colour photos and colour captions: caption -> photo well above chance (1 in 8)
    t2i = [line for line in out.splitlines() if line.startswith("T2I:")][0]
    assert float(t2i.split("R@5 ")[1].split(",")[0]) > 0.5, t2i
