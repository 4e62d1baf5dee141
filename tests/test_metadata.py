"""Users' own metadata: a captions table's extra columns, ``--payload`` / ``--source``, folder
sidecars, typed values; filters over them return what the pure-Python evaluation returns, on
every store; ``items delete --filter source=X`` removes exactly that run's items."""

import json

import numpy as np
import pytest
from PIL import Image

from asif_cli.main import main
from asif_index.errors import ConfigError
from connectors import filters
from connectors.pipeline.metadata import parse_payload_args, read_sidecar, typed_text
from connectors.pipeline.readers import read_captions_table
from tests.stores import BACKENDS, make_store

ALBUMS = ["alps", "beach", "city"]
OWNERS = ["ann", "bo"]


def meta_of(n: int) -> dict:
    m = {"album": ALBUMS[n % 3], "year": 2005 + n % 7, "owner": OWNERS[n % 2]}
    if n % 4:
        m["fav"] = n % 4 == 1
    if n % 5 == 0:
        m["zip"] = "02139"  # stays text: a leading zero is not a number's spelling
    return m


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    (root / "img").mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
    rows = ["image\tcaption\talbum\tyear\towner\tfav\tzip"]
    jl = []
    n = 0
    for name, rgb in colours.items():
        for s in range(6):
            a = np.full((48, 48, 3), 20, np.uint8)
            a[3 + s:45 - s, 3 + s:45 - s] = rgb
            Image.fromarray(a).save(root / "img" / f"{n}.png")
            m = meta_of(n)
            fav = "" if "fav" not in m else ("true" if m["fav"] else "false")
            rows.append(f"{n}.png\ta {name} square\t{m['album']}\t{m['year']}\t{m['owner']}"
                        f"\t{fav}\t{m.get('zip', '')}")
            jl.append(json.dumps({"image": f"{n}.png", "caption": f"a {name} square", **m}))
            n += 1
    (root / "photos.tsv").write_text("\n".join(rows) + "\n")
    (root / "photos.jsonl").write_text("\n".join(jl) + "\n")
    (root / "anchors.tsv").write_text("\n".join(rows[0:1] + [r.split("\t", 2)[0] + "\t" +
                                                              r.split("\t", 2)[1]
                                                              for r in rows[1::2]]) + "\n")
    return root


def test_text_values_are_typed_only_when_they_spell_a_number():
    assert typed_text("2010") == 2010 and typed_text("-3") == -3 and typed_text("0") == 0
    assert typed_text("0.5") == 0.5 and typed_text("true") is True and typed_text("False") is False
    for s in ("02139", "1e3", "+1", "1.", ".5", "12a", "NaN", "inf", " 7", "1,5"):
        assert typed_text(s) == s


def test_table_columns_become_typed_fields_tsv_and_jsonl_alike(photos):
    tsv = list(read_captions_table(photos / "photos.tsv", photos / "img"))
    jsonl = list(read_captions_table(photos / "photos.jsonl", photos / "img"))
    assert len(tsv) == len(jsonl) == 18
    for n, (a, b) in enumerate(zip(tsv, jsonl)):
        assert a.error is None and b.error is None
        want = meta_of(n)
        for it in (a, b):
            assert {k: it.payload[k] for k in want} == want, (n, it.payload)
            assert "fav" in it.payload or "fav" not in want
        assert type(a.payload["year"]) is int and a.payload["caption"].endswith("square")
    only = list(read_captions_table(photos / "photos.tsv", photos / "img", columns=["year"]))
    assert "album" not in only[0].payload and only[0].payload["year"] == 2005
    none = list(read_captions_table(photos / "photos.tsv", photos / "img", columns=[]))
    assert set(none[0].payload) == {"path", "caption"}


def test_bad_columns_and_values_are_named(tmp_path, photos):
    bad = tmp_path / "bad.tsv"
    bad.write_text("image\tcaption\tmy album\n0.png\tx\ty\n")
    with pytest.raises(ConfigError, match="my album") as e:
        list(read_captions_table(bad, photos / "img"))
    assert "\n" not in str(e.value) and "--columns" in str(e.value)
    clash = tmp_path / "clash.tsv"
    clash.write_text("image\tcaption\tsource\n0.png\tx\ty\n")
    with pytest.raises(ConfigError, match="'source' is one of the index's own fields"):
        list(read_captions_table(clash, photos / "img"))
    with pytest.raises(ConfigError, match="no column 'albm'"):
        list(read_captions_table(photos / "photos.tsv", photos / "img", columns=["albm"]))
    nested = tmp_path / "nested.jsonl"
    nested.write_text(json.dumps({"image": "0.png", "caption": "x", "tags": ["a", "b"]}) + "\n" +
                      json.dumps({"image": "1.png", "caption": "y", "tags": "a"}) + "\n")
    items = list(read_captions_table(nested, photos / "img"))
    assert "column 'tags' holds list" in items[0].error and items[1].payload["tags"] == "a"
    for flag, needle in (("novalue", "key=value"), ("asif_to=3", "index.s own"),
                         ("a b=1", "rename"), ("path=/x", "own fields"), ("x=", "empty")):
        with pytest.raises(ConfigError, match=needle):
            parse_payload_args([flag])


def test_sidecar_fields_by_relative_path_or_name(tmp_path, photos):
    from connectors.pipeline.metadata import with_sidecar
    from connectors.pipeline.readers import read_image_folder

    side = tmp_path / "meta.json"
    side.write_text(json.dumps({"0.png": {"album": "alps", "year": 2001},
                                "img/1.png": {"album": "beach"}, "nope.png": {"album": "x"}}))
    items, unused = with_sidecar(list(read_image_folder(photos / "img")), read_sidecar(side),
                                 photos)
    by = {it.payload["path"].rsplit("/", 1)[1]: it.payload for it in items}
    assert by["0.png"]["album"] == "alps" and by["0.png"]["year"] == 2001
    assert by["1.png"]["album"] == "beach" and "album" not in by["2.png"]
    assert unused == ["nope.png"]
    table = tmp_path / "meta.csv"
    table.write_text("file,album,year\n0.png,city,2010\n")
    assert read_sidecar(table) == {"0.png": {"album": "city", "year": 2010}}
    table.write_text("name,album\n0.png,city\n")
    with pytest.raises(ConfigError, match="'file' column"):
        read_sidecar(table)


FILTERS = [
    "album=alps", "album!=alps", "album in [alps,city]", "album not in [alps]", "year>=2008",
    "year<2007", "fav=true", "fav=false", "fav exists", "zip=02139", "owner=ann",
    '{"or": [{"album": "beach"}, {"year": {"gt": 2010}}]}',
    '{"not": {"owner": "bo"}}', '{"and": [{"album": "city"}, {"fav": {"exists": true}}]}',
]


def _expected(rows: list[dict], text: str) -> set[str]:
    expr = filters.parse_cli([text])
    return {r["path"] for r in rows if filters.matches(expr, r, "image")}


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "qdrant-local"])
def test_ingested_fields_filter_as_python_evaluates_them(kind, photos, encoders, tmp_path):
    from connectors.index import Index
    from connectors.pipeline import ingest_anchors, ingest_items

    idx = Index.create(make_store(kind, tmp_path), *encoders, k=6, p=8.0)
    ingest_anchors(idx, list(read_captions_table(photos / "anchors.tsv", photos / "img",
                                                 columns=[])), progress=False)
    s = ingest_items(idx, list(read_captions_table(photos / "photos.tsv", photos / "img")),
                     progress=False, item_source="holiday", fields={"camera": "x100"})
    assert s.ingested == 18, s.report()
    rows = [{**meta_of(n), "path": str((photos / "img" / f"{n}.png").resolve()),
             "source": "holiday", "camera": "x100"} for n in range(18)]
    hits = idx.search(text="a red square", limit=18, qbnorm=False)
    assert len(hits) == 18
    for h in hits:
        want = next(r for r in rows if r["path"] == h.payload["path"])
        assert {k: h.payload.get(k) for k in want} == want
    allq = (np.arange(len(idx.anchors)), np.ones(len(idx.anchors), np.float32))
    for text in FILTERS:
        want = _expected(rows, text)
        got = {h.payload["path"] for h in idx.store.search(*allq, 100, filters.parse_cli([text]),
                                                           idx.version)}
        assert got == want, (text, len(got), len(want))
        assert idx.store.count_items(filters.parse_cli([text]), idx.version) == len(want), text


def test_cli_ingest_with_fields_and_delete_by_source(photos, tmp_path, capfd):
    pytest.importorskip("qdrant_edge")
    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "meta",
         "--cache-dir", str(tmp_path / "cache")]

    def run(*args, rc=0):
        got = main(list(args) + a)
        out = capfd.readouterr()
        assert got == rc, out.err
        return out

    run("init", "--k", "6")
    run("anchors", "add", "--captions", str(photos / "anchors.tsv"), "--images",
        str(photos / "img"))
    run("ingest", "--captions", str(photos / "photos.tsv"), "--images", str(photos / "img"),
        "--source", "trip-a", "--payload", "camera=x100")
    side = tmp_path / "side.json"
    side.write_text(json.dumps({"0.png": {"album": "sidecar"}}))
    run("ingest", "--folder", str(photos / "img"), "--metadata", str(side),
        "--payload", "rating=4")  # the same photos again: same ids, payload replaced
    out = run("search", "--text", "a red square", "--limit", "30", "--json").out
    hits = json.loads(out)["hits"] if out.strip().startswith("{") else json.loads(out)
    assert len(hits) == 18
    assert all(h["payload"]["source"] == "img" and h["payload"]["rating"] == 4 for h in hits)
    assert sum(h["payload"].get("album") == "sidecar" for h in hits) == 1
    # the first run's items are gone from the head (a re-ingest updates them in place),
    # so a fresh run of another source shows the delete is exact
    run("ingest", "--captions", str(photos / "anchors.tsv"), "--images", str(photos / "img"),
        "--modality", "text", "--source", "captions-b")
    # 9 rows, 3 distinct captions: 3 text items (an item is its content)
    out = run("items", "delete", "--filter", "source=captions-b").out
    assert "deleted 3 items" in out and "18 remain" in out
    out = run("search", "--text", "a red square", "--limit", "40", "--json").out
    hits = json.loads(out)["hits"] if out.strip().startswith("{") else json.loads(out)
    assert len(hits) == 18 and {h["payload"]["source"] for h in hits} == {"img"}
    # bad flags: one line, exit 2, before any encoder loads
    err = run("ingest", "--folder", str(photos / "img"), "--payload", "bad", rc=2).err
    assert "key=value" in err and len(err.strip().splitlines()) == 1
    err = run("ingest", "--captions", str(photos / "photos.tsv"), "--metadata", str(side),
              rc=2).err
    assert "--metadata" in err


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "qdrant-local"])
def test_declared_fields_are_type_checked_and_indexed(kind, tmp_path):
    from asif_index.anchors import AnchorPayload
    from asif_index.errors import InputError
    from asif_index.recipe import PUBLISHED
    from connectors.index import Index
    from tests.test_congruence import DI, DT, FakeEncoder

    rng = np.random.default_rng(2)
    unit = lambda n, d: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(  # noqa: E731
        rng.standard_normal((n, d)).astype(np.float32))
    idx = Index.create(make_store(kind, tmp_path), FakeEncoder("image", DI),
                       FakeEncoder("text", DT), k=8, p=8.0, recipe=PUBLISHED,
                       fields={"year": "integer", "album": "keyword", "fav": "bool",
                               "score": "float", "taken": "datetime"})
    idx.add_anchor_embeddings(unit(20, DI), unit(20, DT), [AnchorPayload(f"c{i}")
                                                           for i in range(20)])
    good = {"year": 2010, "album": "alps", "fav": True, "score": 3, "source": "t",
            "taken": "2010-07-01T09:00:00Z"}
    bad = [{"year": "2010"}, {"year": True}, {"year": 2010.0}, {"album": 7}, {"fav": 1},
           {"score": "high"}, {"taken": "July 2010"}, {"taken": 1278000000}]
    recs, errs = idx.records(unit(1 + len(bad), DI), "image",
                             [f"i{j}" for j in range(1 + len(bad))], [good] + bad)
    assert len(recs) == 1 and len(errs) == len(bad)
    for e, b in zip(errs, bad):
        field = next(iter(b))
        assert f"field '{field}' is declared" in str(e) and "\n" not in str(e)
    idx.write(recs)
    # a record made past the checks (point_records) is refused at write, with its batch
    from connectors.base import point_records

    sb = idx.project(unit(2, DI), "image")
    more = point_records(sb, ["x1", "x2"], "image", unit(2, DI),
                         [{"year": 2011}, {"year": "2012"}], idx.version)
    with pytest.raises(InputError, match="declared integer"):
        idx.write(more)
    assert idx.store.count_items(version=idx.version) == 1
    hits = idx.store.search(np.arange(20), np.ones(20, np.float32), 10, {"fav": True},
                            idx.version)
    assert [h.payload["year"] for h in hits] == [2010]
    for flt, n in (({"taken": {"gte": "2010-07-01", "lt": "2010-07-01T10:00+00:00"}}, 1),
                   ({"taken": {"gt": "2010-07-01T09:00:00Z"}}, 0)):
        assert len(idx.store.search(np.arange(20), np.ones(20, np.float32), 10, flt,
                                    idx.version)) == n, flt
    assert hits[0].payload["taken"] == "2010-07-01T09:00:00Z"  # the text as given, no twin
    if kind == "qdrant-edge":
        schema = idx.store._shard(idx.store.items).info().payload_schema
        names = set(schema) if isinstance(schema, dict) else {str(x) for x in schema}
        assert {"year", "album", "score", "source", "asif_b_fav", "taken",
                "asif_d_taken"} <= names, schema


def test_cli_field_declarations_fail_in_one_line(tmp_path, capfd):
    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--cache-dir", str(tmp_path / "c")]
    for spec, needle in (("year", "NAME:TYPE"), ("year:date", "keyword, integer"), ("t:time", "datetime"),
                         ("a b:keyword", "field name"), ("source:integer", "always")):
        assert main(["init", "--field", spec] + a) == 2
        err = capfd.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_moved_photo_folder_keeps_thumbnails_after_one_relocate(photos, tmp_path, encoders,
                                                                capfd):
    """Paths under a named root are stored relative; after the folder moves, one
    ``index relocate`` makes every item resolve (and its thumbnail serve) again."""
    import shutil

    from fastapi.testclient import TestClient

    from connectors import close_embedded
    from connectors.image_roots import resolve, roots_of
    from connectors.index import Index
    from connectors.qdrant_edge import QdrantEdgeStore
    from connectors.service import ServiceSettings, create_app

    pytest.importorskip("qdrant_edge")
    lib = tmp_path / "library"
    shutil.copytree(photos / "img", lib)
    a = ["--backend", "qdrant", "--path", str(tmp_path / "q"), "--name", "roots",
         "--cache-dir", str(tmp_path / "cache")]
    # made with the light encoder (the fixture's); later commands open it with that one
    assert main(["init", "--k", "6", "--image-encoder", "light"] + a) == 0
    assert main(["anchors", "add", "--captions", str(photos / "anchors.tsv"), "--images",
                 str(photos / "img")] + a) == 0
    assert main(["ingest", "--folder", str(lib), "--image-root", f"lib={lib}"] + a) == 0
    capfd.readouterr()
    # the same name for another folder is refused, naming the fix
    assert main(["ingest", "--folder", str(photos / "img"), "--image-root",
                 f"lib={photos / 'img'}"] + a) == 2
    assert "index relocate lib" in capfd.readouterr().err
    close_embedded()
    moved = tmp_path / "moved" / "library"
    moved.parent.mkdir()
    shutil.move(str(lib), str(moved))
    assert main(["index", "relocate", "lib", str(moved)] + a) == 0
    assert "->" in capfd.readouterr().out
    assert main(["index", "relocate", "nope", str(moved)] + a) == 2
    assert "no image root 'nope'" in capfd.readouterr().err
    close_embedded()
    store = QdrantEdgeStore("roots", path=str(tmp_path / "q"))
    idx = Index.open(store, *encoders, cache_dir=str(tmp_path / "cache"))
    hits = idx.search(text="a red square", limit=30, qbnorm=False)
    assert len(hits) == 18
    roots = roots_of(store)
    for h in hits:
        assert h.payload["root"] == "lib" and not h.payload["path"].startswith("/")
        assert resolve(h.payload, roots).is_file()
    app = create_app(idx, ServiceSettings(allow_anonymous=True, image_roots=[moved]),
                     jobs_dir=tmp_path / "jobs")
    try:
        r = TestClient(app).get(f"/items/{hits[0].id}/thumbnail")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
    finally:
        app.state.jobs.stop()
        store.close()
