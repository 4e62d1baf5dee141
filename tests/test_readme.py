"""Every command the README shows runs, in the README's order, on the bundled sample laid out
as the README's files (pairs.tsv + pairs/, mine.csv + photos/, more.tsv): the shell lines
through the CLI, `serve` as a real process (started, asked, stopped with Ctrl-C), and the
Python block as it is written. The README stays within 150 lines."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def shell_lines() -> list[str]:
    out = []
    for b in blocks("bash"):
        for line in b.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_readme_is_a_newcomers_page():
    assert len(README.read_text().splitlines()) <= 150
    cmds = shell_lines()
    assert any(c.startswith("asif-index search") for c in cmds)
    for page in re.findall(r"`(docs/[a-z_]+\.md)`", README.read_text()):
        assert (README.parent / page).is_file(), page


@pytest.fixture()
def layout(tmp_path, monkeypatch):
    """The README's files, from the bundled sample: anchor pairs, more pairs, my photos with
    a year column."""
    from asif_index.sample_data import sample_pairs

    arrays, captions, _ = sample_pairs()
    (tmp_path / "pairs").mkdir()
    (tmp_path / "photos").mkdir()
    pairs, more, mine = ["image\tcaption"], ["image\tcaption"], ["image,caption,year"]
    for i, (a, c) in enumerate(zip(arrays, captions)):
        if i < 36:
            Image.fromarray(a).save(tmp_path / "pairs" / f"{i}.png")
            (pairs if i < 28 else more).append(f"{i}.png\t{c}")
        else:
            Image.fromarray(a).save(tmp_path / "photos" / f"{i}.png")
            mine.append(f'{i}.png,"{c}",{2005 + i % 10}')
    (tmp_path / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    (tmp_path / "more.tsv").write_text("\n".join(more) + "\n")
    (tmp_path / "mine.csv").write_text("\n".join(mine) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ASIF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_every_readme_command_runs(layout, capsys):
    pytest.importorskip("qdrant_edge")
    pytest.importorskip("fastapi")
    from asif_cli.main import main
    from connectors import close_embedded

    env: dict[str, str] = {}
    item = None
    served = False
    for line in shell_lines():
        if line.startswith("bash .ci/setup"):
            continue  # the environment this test already runs in (CI ran that very line)
        line = line.replace(".venv/bin/asif-index", "asif-index")
        if re.fullmatch(r'[A-Z_]+="[^"]*"', line):
            k, v = line.split("=", 1)
            env[k] = v.strip('"')
            continue
        for k, v in env.items():
            line = line.replace(f"${k}", v)
        words = shlex.split(line)
        sets = {}
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            k, v = words.pop(0).split("=", 1)
            sets[k] = v
        assert words[0] == "asif-index", line
        args = [item if w == "ITEM" else w for w in words[1:]]
        if args[0] == "serve":
            close_embedded()  # the embedded engine admits one process
            serve(args, sets, layout)
            served = True
            continue
        capsys.readouterr()
        rc = main(args)
        out = capsys.readouterr()
        assert rc == 0, (line, out.err[-2000:])
        if args[0] == "search":
            hits = [ln.split() for ln in out.out.splitlines() if ln[:1].isdigit()]
            assert hits and all(h[1] == "image" for h in hits), out.out
            item = hits[0][2]
            years = [json.loads(ln.split("  ", 3)[3])["year"] for ln in out.out.splitlines()
                     if ln[:1].isdigit()]
            assert all(y >= 2010 for y in years), years
        if args[0] == "items":
            assert "deleted 2 items" in out.out, out.out  # the photos of 2005 and 2006
    assert served and item
    close_embedded()
    run_python_block(layout)


def serve(args, env, root):
    """`asif-index serve` as the README starts it: answers, then stops on Ctrl-C within
    seconds, saying so."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "asif_cli", *args, "--port", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=root)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("serve did not answer /healthz")
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            assert b"asif-index" in r.read()
        req = urllib.request.Request(base + "/search", method="POST",
                                     data=json.dumps({"text": "a dog"}).encode(),
                                     headers={"X-API-Key": env["ASIF_SERVE_READ_KEYS"],
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["hits"]
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        took = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped serving" in out, out[-2000:]
    print(f"serve stopped {took:.1f} s after Ctrl-C")


def run_python_block(root):
    code = blocks("python")[0]
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)
    assert ns["nodes"] and ns["docs"]
    assert [n.node.id_ for n in ns["nodes"]] == [h.id for h in ns["index"].search(
        text="a dog", limit=5, filter={"modality": "image"})]
    assert all(d.metadata["year"] >= 2010 for d in ns["docs"])
    from connectors import close_embedded

    close_embedded()
