"""File-system and table inputs that once failed a whole ingest, hung it or were used
silently: each is skipped and reported (or refused in one line), the good items beside them
are stored, and nothing blocks (every case runs under an alarm)."""

import contextlib
import io
import json
import os
import signal
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from asif_cli.main import main
from connectors.pipeline import ingest_items, read_captions_table, read_image_folder


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocked open() or read()."""
    def boom(*_):
        raise TimeoutError(f"no answer in {seconds} s: the input hung the reader")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def png(path, size=(40, 40), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(a)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def bomb_png(path):
    """A tiny PNG whose header declares 60000 x 60000 pixels."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                     chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


@pytest.fixture
def hostile_folder(tmp_path):
    """24 good images (some in odd but valid forms) beside the hostile entries; -> (root,
    good names, skipped names)."""
    root = tmp_path / "photos"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    png(outside / "secret.png", seed=99)
    good = []
    for i in range(14):
        good.append(png(root / f"ok{i:02d}.png", seed=i).name)
    # valid images under awkward names and modes (stored, not skipped)
    raw = os.fsencode(str(root)) + b"/caf\xe9-latin1.png"  # not UTF-8
    png(raw.decode("utf-8", "surrogateescape"), seed=20)
    good.append("caf\\xe9-latin1.png")
    good.append(png(root / "one-bit.png", seed=21, mode="1").name)
    good.append(png(root / "cmyk.jpg", seed=22, mode="CMYK").name)
    Image.fromarray((np.random.default_rng(23).integers(0, 65535, (40, 40))).astype(np.uint16)
                    ).save(root / "sixteen.png")
    good.append("sixteen.png")
    good.append(png(root / "palette.png", seed=24, mode="P").name)
    good.append(png(root / "UPPER.JPG", seed=25).name)
    good.append(png(root / "line\nbreak.png", seed=26).name)
    good.append(png(root / ("long" * 60 + ".png"), seed=27).name)
    (root / "sub.jpg").mkdir()  # a folder named like an image is a (class) folder
    good.append(os.path.join("sub.jpg", png(root / "sub.jpg" / "in-class.png", seed=28).name))
    os.symlink(root / "ok00.png", root / "link-inside.png")  # inside: followed
    good.append("link-inside.png")
    # hostile entries: each must be skipped and reported, never opened or hung on
    bad = []
    os.mkfifo(root / "fifo.jpg"); bad.append("fifo.jpg")
    os.symlink("/dev/zero", root / "zero.jpg"); bad.append("zero.jpg")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock.png")); bad.append("sock.png")
    os.symlink(root / "missing.png", root / "broken.jpg"); bad.append("broken.jpg")
    os.symlink(root / "loop.jpg", root / "loop.jpg"); bad.append("loop.jpg")
    os.symlink(outside / "secret.png", root / "escape.png"); bad.append("escape.png")
    os.symlink(outside, root / "escape-dir"); bad.append("escape-dir")
    (root / ".thumbnails").mkdir(); png(root / ".thumbnails" / "t.png"); bad.append(".thumbnails")
    (root / "sub.jpg" / "deeper").mkdir(); bad.append(os.path.join("sub.jpg", "deeper"))
    (root / "empty.jpg").write_bytes(b""); bad.append("empty.jpg")
    (root / "notes.png").write_text("not an image"); bad.append("notes.png")
    data = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data, "JPEG")
    (root / "cut.jpg").write_bytes(data.getvalue()[:200]); bad.append("cut.jpg")
    png(root / "tiny.png", size=(4, 4)); bad.append("tiny.png")
    bomb_png(root / "bomb.png"); bad.append("bomb.png")
    (root / "readme.txt").write_text("not an image and not named like one")  # ignored
    yield root, good, bad
    s.close()


@pytest.fixture
def edge_index(encoders, tmp_path):
    pytest.importorskip("qdrant_edge")
    from asif_index.sample_data import sample_pairs
    from connectors.index import Index
    from connectors.qdrant_edge import QdrantEdgeStore

    arrays, captions, _ = sample_pairs()
    idx = Index.create(QdrantEdgeStore("fs", path=str(tmp_path / "db")), *encoders, k=10)
    idx.add_anchors(list(arrays[:20]), captions[:20])
    return idx


def test_a_hostile_folder_stores_the_good_images_and_reports_the_rest(hostile_folder,
                                                                      edge_index):
    root, good, bad = hostile_folder
    with deadline(120):
        items = list(read_image_folder(root))
        s = ingest_items(edge_index, items, "image", batch_size=8, progress=False)
    skipped = {k for k, _ in s.skipped}
    assert skipped == set(bad), (skipped ^ set(bad))
    assert all(reason and "\n" not in reason for _, reason in s.skipped)
    stored = {h.payload["path"] for b in edge_index.store.scroll_items(
        version=edge_index.version) for h in b}
    # every good name is stored (the inside link has ok00's content: one item for both)
    assert s.ingested == len(good) - 1 and len(stored) == len(good) - 1
    assert any("caf\\xe9" in p for p in stored), "the non-UTF-8 name is stored escaped"
    labels = {b.payload.get("label") for bb in edge_index.store.scroll_items() for b in bb}
    assert labels == {None, "sub.jpg"}, "the folder's own images and its class folder"
    assert len(bad) + len(good) >= 25


def test_following_symlinks_is_opt_in_and_still_never_reads_devices(hostile_folder):
    root, good, bad = hostile_folder
    with deadline(30):
        items = {i.key: i for i in read_image_folder(root, follow_symlinks=True)}
    assert items["escape.png"].error is None  # followed when asked
    assert "device" in items["zero.jpg"].error  # /dev/zero: still never opened


def test_table_inputs(tmp_path, edge_index):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        png(imgs / f"{i}.png", seed=i)
    os.mkfifo(imgs / "pipe.png")
    rows = [{"image": "0.png", "caption": "a photo"},
            {"image": "1.png", "caption": {"text": "an object, not text"}},
            {"image": "pipe.png", "caption": "a FIFO named like an image"},
            {"image": "2.png", "caption": "another photo"}]
    lines = [json.dumps(r) for r in rows] + ['{"image": "0.png", "caption": "a", "caption": "b"}']
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    with deadline(60):
        items = list(read_captions_table(tmp_path / "t.jsonl", imgs))
        s = ingest_items(edge_index, items, "image", progress=False)
    reasons = dict(s.skipped)
    assert s.ingested == 2 and len(s.skipped) == 3, reasons
    assert any("must be text" in r for r in reasons.values())
    assert any("FIFO" in r for r in reasons.values())
    assert any("twice" in r for r in reasons.values())
    (tmp_path / "dup.csv").write_text("image,caption,caption\n0.png,a,b\n")
    from asif_index.errors import ConfigError

    with pytest.raises(ConfigError, match="column 'caption' twice"):
        list(read_captions_table(tmp_path / "dup.csv", imgs))


def one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("asif-index: error:"), err
    for n in needles:
        assert n in err, err
    return err


def test_cli_inputs_are_one_line_errors(tmp_path, capsys, hostile_folder):
    root, _, _ = hostile_folder
    a = ["--backend", "qdrant", "--path", str(tmp_path / "db"), "--name", "cli",
         "--cache-dir", str(tmp_path / "cache")]
    with deadline(300):
        assert main(["init", "--k", "5"] + a) == 0
        (tmp_path / "pairs.tsv").write_text("image\tcaption\n" + "".join(
            f"ok{i:02d}.png\tphoto number {i}\n" for i in range(10)))
        assert main(["anchors", "add", "--captions", str(tmp_path / "pairs.tsv"), "--images",
                     str(root)] + a) == 0
        capsys.readouterr()
        # a name that would escape --path
        rc = main(["init", "--backend", "qdrant", "--path", str(tmp_path / "db"),
                   "--name", "../../escape"])
        one_line_error(capsys, rc, "--name")
        assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "escape").exists()
        # a --cache-dir that is a file
        (tmp_path / "cachefile").write_text("x")
        rc = main(["init", "--backend", "qdrant", "--path", str(tmp_path / "db2"), "--name", "x",
                   "--cache-dir", str(tmp_path / "cachefile")])
        one_line_error(capsys, rc, "--cache-dir")
        # a --checkpoint that is not a checkpoint, and one that is a folder
        junk = tmp_path / "notes.txt"
        junk.write_text("my notes")
        rc = main(["ingest", "--folder", str(root), "--checkpoint", str(junk)] + a)
        one_line_error(capsys, rc, "--checkpoint", "not an asif-index checkpoint")
        assert junk.read_text() == "my notes"
        (tmp_path / "ckdir").mkdir()
        rc = main(["ingest", "--folder", str(root), "--checkpoint", str(tmp_path / "ckdir")] + a)
        one_line_error(capsys, rc, "--checkpoint")
        assert not (tmp_path / "ckdir.tmp").exists()
        # the hostile folder ingests through the CLI too, with a checkpoint
        ck = tmp_path / "ck.json"
        assert main(["ingest", "--folder", str(root), "--checkpoint", str(ck)] + a) == 0
        out = capsys.readouterr().out
        assert "skipped 14 of" in out and json.loads(ck.read_text())["done"] > 0
        assert not ck.with_name("ck.json.tmp").exists()
        # a lone surrogate in --text (undecodable shell bytes)
        rc = main(["search", "--text", "caf\udce9"] + a)
        one_line_error(capsys, rc, "not valid Unicode")
        # filters without an operator, or of the wrong shape
        for f in ("modality", "modality:image"):
            one_line_error(capsys, main(["search", "--text", "x", "--filter", f] + a), "filter")
            one_line_error(capsys, main(["items", "delete", "--filter", f] + a), "filter")
