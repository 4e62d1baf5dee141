"""The filter model: parsing and validation, the same answer on every store as the reference
evaluation (connectors.filters.matches), and a hostile corpus that never reaches around the
version fence."""

import json

import numpy as np
import pytest

from asif_index.anchors import AnchorPayload
from asif_index.errors import InputError
from asif_index.recipe import PUBLISHED
from connectors import filters
from connectors.filters import FilterError, parse, parse_cli
from connectors.index import Index
from tests.stores import BACKENDS, make_store
from tests.test_congruence import DI, DT, FakeEncoder

N_ANCHORS, N_ITEMS = 120, 90
ALBUMS = ["alps", "beach", 'say "cheese"', "back\\slash", "ünï", ""]


def payload_of(i: int) -> dict:
    p = {"n": i}
    if i % 5:
        p["album"] = ALBUMS[i % len(ALBUMS)]
    if i % 3 == 0:
        p["year"] = 2000 + i % 25
    elif i % 3 == 1:
        p["year"] = 2000.5 + i % 25  # floats and ints under one field
    if i % 4 == 0:
        p["fav"] = bool(i % 8)
    if i % 7 == 0:
        p["flag"] = 1  # an int 1, never equal to true
    # dates in every form a table holds: date, naive / UTC / offset datetimes, and some
    # values that are not dates at all (text, a number) under the same field
    day = 1 + i % 28
    p["taken"] = [f"2024-03-{day:02d}", f"2024-03-{day:02d}T10:30", f"2024-03-{day:02d}T23:00Z",
                  f"2024-03-{day:02d}T01:00:00+05:00", "last spring", 20240301][i % 6]
    return p


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)

    def unit(n, d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return {"ai": unit(N_ANCHORS, DI), "at": unit(N_ANCHORS, DT), "ii": unit(N_ITEMS, DI),
            "it": unit(N_ITEMS // 3, DT)}


def build(kind, tmp_path, d):
    store = make_store(kind, tmp_path)
    idx = Index.create(store, FakeEncoder("image", DI), FakeEncoder("text", DT), k=20, p=8.0,
                       recipe=PUBLISHED)
    idx.add_anchor_embeddings(d["ai"], d["at"], [AnchorPayload(f"c{i}") for i in range(N_ANCHORS)])
    for mod, emb in (("image", d["ii"]), ("text", d["it"])):
        recs, errs = idx.records(emb, mod, [f"{mod}{i}" for i in range(len(emb))],
                                 [payload_of(i) for i in range(len(emb))])
        assert not errs
        idx.write(recs)
    return idx


CASES = [
    {"album": "alps"},
    {"album": 'say "cheese"'},
    {"album": "back\\slash"},
    {"album": "ünï"},
    {"album": ""},
    {"album": ["alps", "beach"]},
    {"album": {"nin": ["alps", "beach"]}},
    {"album": {"ne": "alps"}},
    {"year": {"gte": 2010, "lt": 2020}},
    {"year": {"gt": 2010.5}},
    {"year": 2003},
    {"year": 2004.5},
    {"fav": True},
    {"fav": False},
    {"flag": True},
    {"flag": 1},
    {"album": {"exists": True}},
    {"not": {"album": {"exists": True}}},
    {"or": [{"album": "alps"}, {"year": {"lte": 2005}}]},
    {"and": [{"modality": "image"}, {"or": [{"fav": True}, {"not": {"year": {"gte": 2012}}}]}]},
    {"modality": "text", "album": {"in": ["beach", "ünï"]}},
    {"modality": {"ne": "text"}},
    {"taken": {"gte": "2024-03-10", "lt": "2024-03-20"}},
    {"taken": {"gt": "2024-03-05T10:30:00Z"}},
    {"taken": {"lte": "2024-03-09T20:00:00-03:00"}},  # an offset bound: 23:00 UTC
    {"not": {"taken": {"gte": "2024-03-15"}}},  # also the texts and numbers that are no date
    {"or": [{"taken": {"lt": "2024-03-03"}}, {"taken": "last spring"}]},
    {"taken": "2024-03-07"},  # equality compares the text as stored
    {"taken": {"gte": 20240301}},  # a number bound matches the one numeric value only
]


def reference(idx, flt):
    e = parse(flt)
    want = set()
    for batch in idx.store.scroll_items(version=idx.version):
        want |= {r.item for r in batch if filters.matches(e, r.payload, r.modality)}
    return want


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "qdrant-local"])
def test_every_store_matches_the_reference(kind, tmp_path, data):
    idx = build(kind, tmp_path, data)
    q = idx.anchors.project(data["ii"][:1], "image")
    allq = (np.arange(N_ANCHORS), np.ones(N_ANCHORS, np.float32))  # every item scores > 0
    for flt in CASES:
        want = reference(idx, flt)
        if "taken" in json.dumps(flt):  # each date case separates some items from others
            assert 0 < len(want) < N_ITEMS + N_ITEMS // 3, flt
        assert idx.store.count_items(flt, idx.version) == len(want), flt
        got = {h.id for h in idx.store.search(*allq, 1000, flt, idx.version)}
        assert got == want, (flt, len(got), len(want))
        hits = idx.search_vectors(q, 10, flt)[0]
        assert {h.id for h in hits} <= want, flt
    assert len(reference(idx, {"flag": True})) == 0  # bool never equals the int 1


HOSTILE_KEYS = [
    'x"] == 1 or vfrom >= 0 or payload["y', 'a" or "1"=="1', "a'] or true or ['b", "a) or (1==1",
    "vfrom", "asif_to", "asif_from", "a.b", "a[0]", "a b", "", " ", "a\"", "a\\", "a\n",
    "1abc", "-a", "a" * 65, "a\x00", "a\ud800", "$where", "payload", "a;drop", "a/*", "a--",
    "a==b", "日本", "a:b", "a,b",
]
HOSTILE_VALUES = [
    'x" or vfrom >= 0 or "', "\" or true or \"", "a\\", "\\\"", "\n) or (true", "\ud800",
    "a\x00b", float("nan"), float("inf"), {"nested": 1}, [1, [2]], None, 10**30,
]


def test_hostile_keys_are_refused_before_any_store():
    for k in HOSTILE_KEYS:
        if k in ("vfrom", "payload", "a--"):  # plain names: allowed, user payload fields
            assert parse({k: 1}) is not None
            continue
        with pytest.raises(FilterError) as e:
            parse({k: "v"})
        assert "\n" not in str(e.value) and "filter" in str(e.value)
        assert isinstance(e.value, InputError)


def test_hostile_values_are_literals_or_refused():
    for v in HOSTILE_VALUES:
        try:
            e = parse({"album": v})
        except FilterError as exc:
            assert "\n" not in str(exc)
            continue
        rendered = filters.to_milvus(e)
        # the value is one literal that reads back as itself: nothing of it is syntax
        head = '(payload["album"] == '
        assert rendered.startswith(head) and rendered.endswith(")"), rendered
        assert json.loads(rendered[len(head):-1]) == v, rendered


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_no_filter_reaches_around_the_version_fence(kind, tmp_path, data):
    """Deleted items (points closed at the live version) stay invisible whatever the filter."""
    idx = build(kind, tmp_path, data)
    visible = idx.store.count_items(None, idx.version)
    gone = sorted(reference(idx, {"album": "alps"}))
    assert gone and idx.delete_items(gone) == len(gone)
    idx.refresh()
    allq = (np.arange(N_ANCHORS), np.ones(N_ANCHORS, np.float32))
    for v in HOSTILE_VALUES + ["alps"]:
        for k in ["album", "vfrom"]:
            try:
                e = parse({"or": [{k: v}, {"n": {"gte": 0}}]})
            except FilterError:
                continue
            hits = idx.store.search(*allq, 1000, e, idx.version)
            assert not set(gone) & {h.id for h in hits}, (k, v)
            assert idx.store.count_items(e, idx.version) <= visible - len(gone)
    # and the injection the attack used, as a filter key, is refused outright
    with pytest.raises(FilterError):
        idx.store.count_items({'x"] == 1 or vfrom >= 0 or payload["y': 1}, idx.version)


CLI_OK = {
    "album=alps": {"album": "alps"},
    "year>=2010": {"year": {"gte": 2010}},
    "year < 2010.5": {"year": {"lt": 2010.5}},
    "album!=alps": {"album": {"ne": "alps"}},
    "album in [alps, beach]": {"album": ["alps", "beach"]},
    'album in ["alps","beach"]': {"album": ["alps", "beach"]},
    "album not in [alps]": {"album": {"nin": ["alps"]}},
    "album exists": {"album": {"exists": True}},
    "fav=true": {"fav": True},
    "n=3": {"n": 3},
    "taken>=2024-03-01": {"taken": {"gte": "2024-03-01"}},
    "taken<2024-03-01T12:00:00Z": {"taken": {"lt": "2024-03-01T12:00:00Z"}},
    'title=a=b': {"title": "a=b"},
    '{"or": [{"album": "alps"}, {"n": 1}]}': {"or": [{"album": "alps"}, {"n": 1}]},
}
CLI_BAD = ["modality", "modality:image", "modality=photo", "=x", "album=", "album in alps",
           "year>=abc", "", "{not json", "asif_to>=0", 'x"]=1', "a b=c", "year>=true"]


def test_cli_filters_parse_as_their_json_twins():
    for text, obj in CLI_OK.items():
        assert parse_cli([text]) == parse(obj), text
    assert parse_cli(["album=alps", "n>=2"]) == parse({"album": "alps", "n": {"gte": 2}})
    for text in CLI_BAD:
        with pytest.raises(FilterError) as e:
            parse_cli([text])
        assert "\n" not in str(e.value), text


def test_dates_read_as_instants_in_utc():
    inst = filters.instant
    assert inst("1970-01-02") == 86400.0
    assert inst("1970-01-01T01:00") == inst("1970-01-01T01:00:00Z") == 3600.0
    assert inst("1970-01-01T03:00:00+02:00") == 3600.0 == inst("1970-01-01 01:00:00.000000001")
    for bad in ("2024-02-30", "2024-13-01", "24-01-01", "2024/01/01", "2024-01-01T", "now",
                "", 1.5, None, "2024-01-01T10:00+0"):
        assert inst(bad) is None, bad
    e = parse({"taken": {"gte": "2024-03-01"}})
    assert filters.uses_dates(e) and parse(filters.to_json(e)) == e
    assert filters.matches(e, {"taken": "2024-03-01T00:00:00+00:00"}, "image")
    assert not filters.matches(e, {"taken": "2024-02-29T23:59:59Z"}, "image")
    assert not filters.matches(e, {"taken": 1.8e9}, "image")  # a number is no date
    with pytest.raises(FilterError, match="ISO 8601"):
        parse({"taken": {"gt": "March"}})


def test_only_modality_reads_the_pinned_modality():
    assert filters.only_modality(parse({"modality": "image", "album": "x"})) == "image"
    assert filters.only_modality(parse({"or": [{"modality": "image"}, {"album": "x"}]})) is None
    assert filters.only_modality(parse({"album": "x"})) is None


@pytest.mark.parametrize("kind", ["memory", "qdrant-edge", "milvus-lite"])
def test_hostile_filters_through_the_service_are_json_4xx_or_fenced(kind, tmp_path, data):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from connectors.service import ServiceSettings, create_app

    idx = build(kind, tmp_path, data)
    gone = sorted(reference(idx, {"album": "alps"}))
    idx.delete_items(gone)
    idx.refresh()
    client = TestClient(create_app(idx, ServiceSettings(read_keys=["r"], admin_keys=["a"])),
                        raise_server_exceptions=False)
    anchor_item = sorted(reference(idx, {"album": "beach"}))[0]
    bodies = [{k: "v"} for k in HOSTILE_KEYS] + [{"album": v} for v in HOSTILE_VALUES[:9]]
    bodies += [{"or": [{"album": v}, {"n": {"gte": 0}}]} for v in HOSTILE_VALUES[:6]]
    bodies += [{"album": {"op": 1}}, {"or": "x"}, {"not": None}, {"year": {"gte": "2010"}}]
    codes = {}
    for flt in bodies:
        # as JSON text with \u escapes, the way a client sends a lone surrogate
        body = json.dumps({"item_id": anchor_item, "limit": 200, "filter": flt})
        r = client.post("/search", content=body, headers={"X-API-Key": "r",
                                                          "Content-Type": "application/json"})
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        assert r.status_code in (200, 422), (flt, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        if r.status_code == 200:
            assert not set(gone) & {x["id"] for x in r.json()["hits"]}, flt
        else:
            assert r.json()["error"] and "\n" not in r.json()["detail"]
    assert codes.get(422, 0) >= 30 and codes.get(200, 0) >= 5, codes


def test_hostile_filters_on_the_cli_are_one_line_exit_2(tmp_path, capsys):
    from asif_cli.main import main

    a = ["--backend", "qdrant", "--path", str(tmp_path / "none"), "--name", "x"]
    for k in HOSTILE_KEYS[:12] + ["modality", "modality:image", "asif_to>=0"]:
        if k in ("vfrom", "payload"):
            continue
        rc = main(["search", "--text", "x", "--filter", f"{k}=1"] + a)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "filter" in err, (k, err)
        rc = main(["items", "delete", "--filter", k] + a)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "filter" in err, (k, err)


def test_reserved_payload_fields_are_refused_at_write(data):
    """A user field named like the index's own (asif_to, asif_t) would be dropped or would
    shadow them: the item is refused and reported instead."""
    from connectors.memory import MemoryStore

    idx = Index.create(MemoryStore("r"), FakeEncoder("image", DI), FakeEncoder("text", DT),
                       k=20, recipe=PUBLISHED)
    idx.add_anchor_embeddings(data["ai"], data["at"], [AnchorPayload("c")] * N_ANCHORS)
    recs, errs = idx.records(data["ii"][:2], "image", ["a", "b"],
                             [{"asif_to": 0}, {"album": "ok"}])
    assert len(recs) == 1 and len(errs) == 1 and "reserved" in str(errs[0])


def test_an_index_made_before_date_twins_refuses_date_ranges(tmp_path, data):
    idx = build("memory", tmp_path, data)
    q = idx.anchors.project(data["ii"][:1], "image")
    assert idx.search_vectors(q, 5, {"taken": {"gte": "2024-03-01"}})[0]
    idx.anchors.manifest.extra.pop("date_twins")  # as a manifest written before them reads
    with pytest.raises(FilterError, match="date twins") as e:
        idx.search_vectors(q, 5, {"taken": {"gte": "2024-03-01"}})
    assert "\n" not in str(e.value)
    assert idx.search_vectors(q, 5, {"n": {"gte": 0}})[0]  # other filters still answer
