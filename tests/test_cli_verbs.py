"""The command line's verbs, help and errors, driven as a user would."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from asif_cli.main import build_parser, main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("verbs")
    (root / "img" / "red").mkdir(parents=True)
    (root / "img" / "blue").mkdir(parents=True)
    rows = ["image\tcaption"]
    for n, (name, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 60, 220))] * 4):
        a = np.full((48, 48, 3), 20, np.uint8)
        a[4 + n:44 - n, 4 + n:44 - n] = rgb
        Image.fromarray(a).save(root / "img" / name / f"{n}.png")
        rows.append(f"{name}/{n}.png\ta {name} square number {n}")
    (root / "pairs.tsv").write_text("\n".join(rows) + "\n")
    (root / "queries.txt").write_text("a red square\n\na blue square\n")
    return root


def test_verbs_end_to_end(data, tmp_path, capsys):
    pytest.importorskip("qdrant_edge")
    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "v",
         "--cache-dir", str(tmp_path / "cache")]

    def run(*args, rc=0):
        got = main(list(args) + a)
        out = capsys.readouterr()
        assert got == rc, out.err
        return out.out, out.err

    assert json.loads(run("init", "--k", "4", "--recipe", "centered")[0])["recipe"] == "centered"
    run("anchors", "add", "--captions", str(data / "pairs.tsv"), "--images", str(data / "img"))
    out, err = run("anchors", "list", "--grep", "RED")
    assert len(out.splitlines()) == 4 and "4 of 8 anchors shown" in err
    listed = [json.loads(x) for x in run("anchors", "list", "--json")[0].splitlines()]
    assert [x["id"] for x in listed] == list(range(8)) and listed[0]["caption"].startswith("a red")
    ck = tmp_path / "ck.json"
    out, _ = run("ingest", "--folder", str(data / "img"), "--checkpoint", str(ck))
    assert "ingested 8 new" in out
    out, _ = run("ingest", "--folder", str(data / "img"), "--checkpoint", str(ck))
    assert "resumed from the checkpoint: the first 8 source items" in out
    out, _ = run("ingest", "--folder", str(data / "img"), "--checkpoint", str(ck), "--restart")
    assert "resumed" not in out and "updated 8" in out
    # search: lines, JSON, more-like-this, many queries in one process, empty results
    hit = json.loads(run("search", "--text", "a red square", "--json", "--limit", "3")[0])
    assert len(hit["hits"]) == 3 and hit["hits"][0]["payload"]["label"] == "red"
    first = hit["hits"][0]["id"]
    like = json.loads(run("search", "--item", first, "--json", "--limit", "2")[0])
    assert like["hits"][0]["id"] == first
    lines = run("search", "--queries", str(data / "queries.txt"), "--query-keep", "all")[0]
    assert [json.loads(x)["query"] for x in lines.splitlines()] == ["a red square", "a blue square"]
    out, _ = run("search", "--text", "a red square", "--filter", "label=green")
    assert out.startswith("no results for 'a red square'")
    _, err = run("search", "--text", "x", "--query-keep", "zero", rc=2)
    assert "--query-keep" in err
    # classify a folder, with scores; explain as JSON
    out, _ = run("classify", "--folder", str(data / "img"), "--labels", "red,blue")
    assert len(out.splitlines()) == 8 and "red 0." in out and "blue 0." in out
    rows = [json.loads(x) for x in run("classify", "--folder", str(data / "img" / "red"),
                                       "--labels", "red,blue", "--json")[0].splitlines()]
    assert {r["label"] for r in rows} == {"red"} and set(rows[0]["scores"]) == {"red", "blue"}
    ex = json.loads(run("explain", "--item", first, "--text", "a red square", "--json")[0])
    assert ex["score"] == pytest.approx(hit["hits"][0]["score"], abs=1e-4) and ex["anchors"]
    # items delete: by id and by filter; gone from search and from the counts
    out, _ = run("items", "delete", "--ids", first)
    assert out.startswith("deleted 1 items") and "7 remain" in out
    again = json.loads(run("search", "--text", "a red square", "--json", "--limit", "10")[0])
    assert first not in {h["id"] for h in again["hits"]}
    assert len(again["hits"]) == 3  # the other red squares (blue ones share no anchor)
    out, _ = run("items", "delete", "--filter", "label=blue")
    assert out.startswith("deleted 4 items") and "3 remain" in out
    _, err = run("items", "delete", rc=2)
    assert "--ids" in err
    run("ingest", "--folder", str(data / "img"), "--restart", "--checkpoint", str(ck))
    # indexes: list, rebuild behind the alias, drop the old physical index
    assert json.loads(run("indexes", "--json")[0])[0]["name"] == "v"
    run("anchors", "rebuild", "--k", "3", "--recipe", "asif")
    listed = json.loads(run("indexes", "--json")[0])
    new = [x for x in listed if x["aliases"] == ["v"]]
    assert len(listed) == 2 and len(new) == 1 and new[0]["k"] == 3
    out, _ = run("ingest", "--folder", str(data / "img"), "--checkpoint", str(ck))
    assert "resumed from the checkpoint" in out  # the checkpoint follows the alias
    _, err = run("index", "drop", new[0]["name"], rc=2)
    assert "--yes" in err
    _, err = run("index", "drop", new[0]["name"], "--yes", rc=2)
    assert "alias" in err
    run("index", "drop", "v", "--yes")
    assert [x["name"] for x in json.loads(run("indexes", "--json")[0])] == [new[0]["name"]]
    stats = json.loads(run("stats")[0])
    assert stats["k"] == 3 and stats["recipe"] == "asif"  # the alias still answers
    _, err = run("init", "--recipe", "centred", rc=2)
    assert "'centred' is not a recipe setting" in err
    # the read-only commands start without the encoders: torch is never imported
    from connectors import close_embedded

    close_embedded()  # the embedded shard admits one process at a time
    code = ("import sys; from asif_cli.main import main; rc = main(sys.argv[1:]); "
            "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr); "
            "sys.exit(rc)")
    for cmd in (["stats"], ["anchors", "list", "--json"], ["anchors", "status"],
                ["indexes", "list"]):
        r = subprocess.run([sys.executable, "-c", code, *cmd, *a], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and r.stderr.splitlines() == ["no torch"], (cmd, r.stderr)
    assert r.stdout.startswith(new[0]["name"])  # 'indexes list' lists the rebuilt index


def _options(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {n}", a) for n, a in _options(sub))
        else:
            yield "", action


def test_every_option_of_every_command_is_described():
    missing = [f"{cmd.strip() or 'asif-index'}: {'/'.join(a.option_strings) or a.dest}"
               for cmd, a in _options(build_parser())
               if a.help in (None, "") and not isinstance(a, argparse._HelpAction)]
    assert not missing, missing


def test_errors_are_one_line_without_traceback(tmp_path):
    cases = [["search", "--path", str(tmp_path / "nope"), "--text", "x"],
             ["stats", "--backend", "milvus", "--path", str(tmp_path / "x.db")],
             ["classify", "--path", str(tmp_path), "--folder", str(tmp_path / "none"),
              "--labels", "a,b"],
             ["anchors", "remove", "--ids", "x"],
             ["search", "--text", "x", "--url", "http://h:1", "--path", str(tmp_path)]]
    for args in cases:
        r = subprocess.run([sys.executable, "-m", "asif_cli.main", *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("asif-index")


def _commands(parser, prefix=""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _commands(sub, f"{prefix}{name} ")
                else:
                    yield f"{prefix}{name}", sub


def test_every_command_shows_an_example():
    missing = [name for name, p in _commands(build_parser())
               if "example" not in (p.epilog or "") or "asif-index" not in (p.epilog or "")]
    assert not missing, missing


def test_ctrl_c_stops_an_ingest_and_a_rerun_resumes(data, tmp_path):
    """SIGINT in the middle of an ingest: exit code 130 and the one-line message; the
    checkpoint holds the batches written, and the same command finishes the rest without
    duplicating anything."""
    import signal
    import time

    pytest.importorskip("qdrant_edge")
    from connectors import close_embedded

    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "cc",
         "--cache-dir", str(tmp_path / "cache")]
    assert main(["init", "--k", "4"] + a) == 0
    assert main(["anchors", "add", "--captions", str(data / "pairs.tsv"), "--images",
                 str(data / "img")] + a) == 0
    close_embedded()
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a {c} square seen {i} times\n" for i in range(300)
                             for c in ["red"]))
    ck = tmp_path / "ck.json"
    cmd = [sys.executable, "-m", "asif_cli.main", "ingest", "--texts", str(texts),
           "--modality", "text", "--batch-size", "16", "--checkpoint", str(ck)] + a
    # SIGINT handled as in a terminal, even under a test runner whose workers ignore it (an
    # ignored SIGINT is inherited, and Python then installs no KeyboardInterrupt handler). The
    # child restores the handler itself: a preexec_fn would make Python fork instead of
    # vfork, and a worker that has loaded gRPC (pymilvus) then aborts in the child's fork
    # handlers (seen in CI: "Epoll1Poller ... epoll_wait error: Bad file descriptor").
    boot = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
            " sys.argv = sys.argv[1:]; runpy.run_module('asif_cli.main', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", boot, "asif-index"] + cmd[3:],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (ck.is_file() and json.loads(ck.read_text())["done"] >= 16):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; nothing stored is lost" in err and "Traceback" not in err
    done = json.loads(ck.read_text())["done"]
    assert 16 <= done < 300
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"the first {done} source items were done by an earlier run" in r.stdout
    st = subprocess.run([sys.executable, "-m", "asif_cli.main", "stats"] + a,
                        capture_output=True, text=True, timeout=120)
    assert json.loads(st.stdout)["text_items"] == 300  # each text once
