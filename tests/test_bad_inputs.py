"""A corpus of bad files and bad flag values, each driven through the command line against a
real index: every case ends in a one-line error (exit 2) or a skip report (exit 0), never a
traceback, and leaves every point and anchor already stored exactly as it was."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from asif_cli.main import main
from connectors.pipeline.readers import write_webdataset


def png(rgb, size=48):
    a = np.full((size, size, 3), 20, np.uint8)
    a[6:-6, 6:-6] = rgb
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Good pairs, and one file per kind of damage."""
    root = tmp_path_factory.mktemp("corpus")
    img = root / "img"
    img.mkdir()
    rows = ["image\tcaption"]
    for n, (name, rgb) in enumerate(COLOURS.items()):
        for s in range(3):
            (img / f"{name}{s}.png").write_bytes(png(tuple(max(0, c - 20 * s) for c in rgb)))
            rows.append(f"{name}{s}.png\ta {name} square")
    (root / "pairs.tsv").write_text("\n".join(rows) + "\n")
    bad = root / "bad"
    bad.mkdir()
    # images
    Image.new("1", (20000, 20000)).save(img / "bomb.png", optimize=True)  # decompression bomb
    (img / "empty.png").write_bytes(b"")
    (img / "truncated.png").write_bytes(png((1, 2, 3))[:60])
    (img / "notimage.png").write_text("this is text, not a picture")
    Image.new("RGB", (4, 4)).save(img / "tiny.png")
    # tables
    (bad / "badrow.tsv").write_bytes(b"image\tcaption\nred0.png\ta red square\n"
                                     b"green0.png\ta gr\xffeen square\n")
    (bad / "badheader.tsv").write_bytes(b"ima\xffge\tcaption\nred0.png\tx\n")
    (bad / "badline.jsonl").write_text('{"image": "red0.png", "caption": "a red square"}\n'
                                       '{"image": "green0.png", "caption": \n')
    (bad / "corrupt.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50)
    (bad / "nocols.tsv").write_text("file\ttext\nred0.png\tx\n")
    (bad / "longcap.tsv").write_text("image\tcaption\nred0.png\t" + "x" * 100_000 + "\n"
                                     "blue0.png\ta blue square\n")
    (bad / "bombs.tsv").write_text("image\tcaption\nbomb.png\ta bomb\nempty.png\tempty\n"
                                   "truncated.png\tcut\nnotimage.png\ttext\ntiny.png\ttiny\n"
                                   "blue1.png\ta blue square\n")
    (bad / "texts.txt").write_bytes(b"a red square\nbad \xfe\xff line\na green square\n")
    # containers
    good = [(f"k{i}", png(rgb), f"a {name} square") for i, (name, rgb) in enumerate(COLOURS.items())]
    shard = write_webdataset(bad / "good.tar", good)
    data = shard.read_bytes()
    (bad / "truncated.tar").write_bytes(data[: 512 * 3 + 100])
    hdr = bytearray(data)
    hdr[1536 + 500] ^= 0xFF  # corrupt the checksum field of the 2nd sample's image header
    i = hdr.find(b"k1.jpg")
    hdr[i + 148:i + 156] = b"99999999"
    (bad / "corrupt_header.tar").write_bytes(bytes(hdr))
    with tarfile.open(bad / "badtext.tar", "w") as tf:
        for name, payload in (("s0.jpg", png((200, 0, 0))), ("s0.txt", b"bad \xff text"),
                              ("s1.jpg", png((0, 0, 200))), ("s1.json", b"{not json")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    (bad / "notatar.tar").write_text("plain text")
    # config files
    (bad / "cfg_bytes.json").write_bytes(b'{"k": 8\xff}')
    (bad / "cfg_syntax.json").write_text('{"k": 8,,}')
    (bad / "cfg_unknown.json").write_text('{"kk": 8}')
    (bad / "cfg_inf.json").write_text('{"p": Infinity}')
    (bad / "cfg_list.json").write_text("[1, 2]")
    return root


@pytest.fixture(scope="module")
def index_args(corpus, tmp_path_factory):
    pytest.importorskip("qdrant_client")
    base = tmp_path_factory.mktemp("idx")
    a = ["--backend", "qdrant", "--path", str(base / "q"), "--name", "bad",
         "--cache-dir", str(base / "cache")]
    assert main(["init", "--k", "6"] + a) == 0
    assert main(["anchors", "add", "--captions", str(corpus / "pairs.tsv"), "--images",
                 str(corpus / "img")] + a) == 0
    assert main(["ingest", "--folder", str(corpus / "img"), "--batch-size", "4"] + a) == 0
    return a


def snapshot(args):
    from asif_index.config import AsifSettings
    from connectors import open_store

    path = args[args.index("--path") + 1]
    store = open_store(AsifSettings.load(backend="qdrant", path=path, collection="bad"))
    man = store.read_manifest()
    points = {r.id: (r.sparse_indices.tolist(), np.round(r.sparse_values, 4).tolist(),
                     r.valid_from, r.valid_to) for b in store.scroll_items() for r in b}
    anchors = {a.id: (a.caption, a.added_version, a.removed_version)
               for a in store.fetch_anchors(None)}
    return man.version, points, anchors


C = "{corpus}"
ERRORS = [  # (argv with {corpus} and {bad}, what the one-line error must say)
    (["anchors", "add", "--captions", "{bad}/badheader.tsv"], "header .* not UTF-8"),
    (["anchors", "add", "--captions", "{bad}/corrupt.parquet"], "Parquet table .* cannot be read"),
    (["anchors", "add", "--captions", "{bad}/nocols.tsv"], "name the image and caption columns"),
    (["anchors", "add", "--captions", "{bad}/missing.tsv"], "does not exist"),
    (["anchors", "add", "--captions", "{bad}/badrow.tsv", "--images", "{bad}/nowhere"],
     r"image folder .* \(--images\) does not exist"),
    (["ingest", "--folder", "{bad}/nowhere"], r"image folder .* does not exist \(--folder\)"),
    (["ingest"], "give a source"),
    (["ingest", "--texts", "{bad}/missing.txt", "--modality", "text"], "does not exist"),
    (["stats", "--config", "{bad}/cfg_bytes.json"], "not UTF-8"),
    (["stats", "--config", "{bad}/cfg_syntax.json"], "not valid JSON"),
    (["stats", "--config", "{bad}/cfg_unknown.json"], "unknown setting 'kk'"),
    (["stats", "--config", "{bad}/cfg_inf.json"], "finite number"),
    (["stats", "--config", "{bad}/cfg_list.json"], "JSON object"),
    (["stats", "--config", "{bad}/none.json"], "does not exist"),
    (["anchors", "remove", "--ids", "1,x"], "'x' is not an anchor id"),
    (["anchors", "remove", "--ids=-3"], "not an anchor id|not a valid id"),
    (["anchors", "remove", "--ids", "99999"], "unknown anchor ids"),
    (["anchors", "remove", "--ids", ","], "no anchor ids"),
    (["ingest", "--folder", "{corpus}/img", "--batch-size", "-1"], "--batch-size: -1 is not allowed"),
    (["ingest", "--folder", "{corpus}/img", "--batch-size", "0"], "--batch-size: 0 is not allowed"),
    (["search", "--text", "x", "--limit", "0"], "--limit: 0 is not allowed"),
    (["init", "--p", "inf"], "--p: inf is not allowed"),
    (["init", "--k", "0"], "--k: 0 is not allowed"),
    (["search", "--text", "x", "--k", "5"], "unrecognized arguments: --k"),
    (["search", "--text", "x", "--timeout", "0"], "--timeout"),
    (["search", "--text", "x", "--backend", "bogus"], "invalid choice: 'bogus'"),
    (["search", "--text", "x", "--device", "tpu"], "device must be auto, cpu or cuda"),
    (["search", "--image", "{bad}/missing.png"], "does not exist"),
    (["explain", "--item", "no-such-item", "--text", "x"], "no item with id 'no-such-item'"),
    (["search", "--text", "x", "--url", "http://127.0.0.1:9"], "either --url .* or --path"),
    (["search", "--text", "x", "--name", "nosuchindex"], "no asif index 'nosuchindex'"),
    (["stats", "--path", "{bad}/typo-folder"], "no qdrant database at .*typo-folder"),
    (["stats", "--backend", "milvus", "--path", "{bad}/typo.db"], "no milvus database at"),
]
SKIPS = [  # (argv, text the report must contain)
    (["anchors", "add", "--captions", "{bad}/badrow.tsv", "--images", "{corpus}/img"],
     "not valid UTF-8"),
    (["anchors", "add", "--captions", "{bad}/badline.jsonl", "--images", "{corpus}/img"],
     "not valid JSON"),
    (["anchors", "add", "--captions", "{bad}/longcap.tsv", "--images", "{corpus}/img"],
     "over the 4096-byte limit"),
    (["anchors", "add", "--captions", "{bad}/bombs.tsv", "--images", "{corpus}/img"],
     "pixel|decompression bomb"),
    (["ingest", "--captions", "{bad}/bombs.tsv", "--images", "{corpus}/img"], "decompression bomb"),
    (["ingest", "--texts", "{bad}/texts.txt", "--modality", "text"], "not valid UTF-8"),
    (["ingest", "--webdataset", "{bad}/truncated.tar"], "truncated"),
    (["ingest", "--webdataset", "{bad}/corrupt_header.tar"], "damaged"),
    (["ingest", "--webdataset", "{bad}/badtext.tar", "--modality", "both"], "not UTF-8"),
    (["ingest", "--webdataset", "{bad}/notatar.tar"], "not a readable tar archive"),
]


def _argv(template, corpus, args):
    """The case's flags win over the index's (argparse keeps the last of a repeated flag)."""
    return args[:0] + [x.format(corpus=corpus, bad=corpus / "bad") for x in template] + [
        x for i, x in enumerate(args)
        if x not in template and not (i and args[i - 1] in template)]


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return rc, out


@pytest.mark.parametrize("template,says", ERRORS, ids=[" ".join(t)[:60] for t, _ in ERRORS])
def test_bad_input_is_one_line_error_and_changes_nothing(template, says, corpus, index_args,
                                                         capsys):
    import re

    before = snapshot(index_args)
    rc, out = _run(_argv(template, corpus, index_args), capsys)
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert rc == 2, out
    assert len(lines) == 1 and "error:" in lines[0], out.err
    assert re.search(says, lines[0]), lines[0]
    assert snapshot(index_args) == before


@pytest.mark.parametrize("template,says", SKIPS, ids=[" ".join(t)[:60] for t, _ in SKIPS])
def test_bad_member_is_skipped_and_reported(template, says, corpus, index_args, capsys):
    import re

    v0, points0, anchors0 = snapshot(index_args)
    rc, out = _run(_argv(template, corpus, index_args), capsys)
    assert rc == 0, out.err
    assert re.search(r"skipped [1-9]\d* of", out.out), out.out
    assert re.search(says, out.out), out.out
    v1, points1, anchors1 = snapshot(index_args)
    for pid, rec in points0.items():  # what was stored (and still visible) is untouched
        if rec[3] > v1:
            assert points1.get(pid, rec)[:3] == rec[:3]
    assert {a: anchors1[a][:1] for a in anchors0} == {a: c[:1] for a, c in anchors0.items()}


def test_good_members_after_a_bomb_are_stored_and_resume_passes_it(corpus, tmp_path, capsys):
    pytest.importorskip("milvus_lite")
    a = ["--backend", "milvus", "--path", str(tmp_path / "b.db"), "--name", "bomb",
         "--cache-dir", str(tmp_path / "cache")]
    assert main(["init", "--k", "6"] + a) == 0
    assert main(["anchors", "add", "--captions", str(corpus / "pairs.tsv"), "--images",
                 str(corpus / "img")] + a) == 0
    capsys.readouterr()
    ck = tmp_path / "ck.json"
    rc, out = _run(["ingest", "--captions", str(corpus / "bad" / "bombs.tsv"), "--images",
                    str(corpus / "img"), "--batch-size", "1", "--checkpoint", str(ck)] + a, capsys)
    assert rc == 0 and "ingested 1 new" in out.out and "skipped 5 of 6" in out.out, out.out
    rc, out = _run(["stats"] + a, capsys)
    assert json.loads(out.out)["items"] == 1


def test_milvus_lite_file_names_are_checked_before_use(tmp_path, capsys):
    pytest.importorskip("milvus_lite")
    for name, says in (("a b.db", "may hold only letters"), ("x" * 40 + ".db", "at most 36")):
        rc, out = _run(["init", "--backend", "milvus", "--path", str(tmp_path / name)], capsys)
        assert rc == 2 and says in out.err and len(out.err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir()), "nothing created"


def test_removing_the_same_id_twice_counts_it_once(corpus, tmp_path, capsys):
    pytest.importorskip("qdrant_edge")
    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "dup",
         "--cache-dir", str(tmp_path / "cache")]
    assert main(["init", "--k", "4"] + a) == 0
    assert main(["anchors", "add", "--captions", str(corpus / "pairs.tsv"), "--images",
                 str(corpus / "img")] + a) == 0
    capsys.readouterr()
    rc, out = _run(["anchors", "remove", "--ids", "0,0,1-1"] + a, capsys)
    assert rc == 0 and "removed 2 anchors" in out.out, out.out


def test_a_second_process_on_a_milvus_lite_file_is_told_why(tmp_path):
    pytest.importorskip("milvus_lite")
    import subprocess
    import sys
    import time

    from asif_index.errors import BackendUnavailableError
    from connectors.milvus import MilvusStore

    db = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"from pymilvus import MilvusClient; c = MilvusClient({str(db)!r}); "
                               "print('held', flush=True); import time; time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="open in another process"):
            MilvusStore("x", uri=str(db), retry_budget=2)
        assert time.monotonic() - t0 < 30
    finally:
        holder.kill()
