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
    assert main(["eval", "unified", *common, "--no-pointing", "--queries", "8", "--docs",
                 str(page), "--json", "--k", "10", "--p", "4"]) == 0
    first = capsys.readouterr().out
    found = json.loads(first[first.index("\n{") + 1:])
    assert found["photos"] == 8 and found["captions"] == 40 and found["anchors"] == 80
    assert 0 <= found["gap"]["image_nn_is_text"] <= 1
    assert main(["eval", "text-classifier", *common, "--noise", "0,0.08", "--kinds",
                 "centroid", "--no-mean-shift", "--draws", "2", "--docs", str(page),
                 "--k", "10", "--p", "4"]) == 0
    assert main(["eval", "rerank", *common, "--queries", "20", "--m", "10", "--weights",
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


def test_cli_modules_import_no_circle():
    """asif_cli's modules, with every import (module level or inside a function), form no
    cycle: the product commands never reach into the lab's."""
    import ast
    from pathlib import Path

    import asif_cli

    root = Path(asif_cli.__file__).parent
    graph = {}
    for f in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "asif_cli":
                    deps |= {f"asif_cli.{a.name}" for a in node.names}
                elif node.module.startswith("asif_cli."):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("asif_cli.")}
        graph[f"asif_cli.{f.stem}"] = deps - {f"asif_cli.{f.stem}"}

    def reach(start, seen):
        for d in graph.get(start, ()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    cyclic = sorted(m for m in graph if m in reach(m, set()))
    assert not cyclic, {m: sorted(graph[m]) for m in cyclic}
    assert "asif_cli.method_commands" not in reach("asif_cli.db_commands", set())


def test_product_verbs_first_and_old_names_still_work(capsys):
    from asif_cli.main import build_parser, main

    text = build_parser().format_help()
    listed = [ln.split()[0] for ln in text.split("COMMAND", 2)[-1].splitlines()
              if ln.startswith("    ") and not ln.startswith("     ")]
    assert listed[:6] == ["init", "anchors", "ingest", "search", "classify", "explain"], listed
    assert listed.index("eval") > listed.index("serve") and "evaluate-qbnorm" not in text
    assert main(["evaluate-qbnorm", "--temperatures", "0", "--data", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "'evaluate-qbnorm' is now 'asif-index eval qbnorm'" in err
