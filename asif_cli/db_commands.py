"""Database commands of the ``asif-index`` CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from asif_cli.args import (anchor_ids, kp_options, non_negative_int, open_unit_float,
                           positive_float, positive_int,
                           qbnorm_choice, query_keep, query_lines)
from asif_cli.output import hit_dict, print_explanation, print_hits, print_prediction


def _settings(args):
    from asif_index.config import AsifSettings

    return AsifSettings.load(
        args.config, text_encoder=args.text_encoder, image_encoder=args.image_encoder,
        device=args.device, k=getattr(args, "k", None), p=getattr(args, "p", None),
        cache_dir=args.cache_dir, backend=args.backend, url=args.url, path=args.path,
        api_key=args.api_key, collection=args.name, request_timeout=args.timeout,
    )


def _open(args, create: bool = False):
    from connectors import Index, open_index, open_store

    s = _settings(args)
    if not create:
        return open_index(s)  # with the encoders it was made with, unless the user names others
    recipe = _recipe(args)  # a bad --recipe fails before any work
    from connectors.schema import parse_field_specs

    fields = parse_field_specs(getattr(args, "field", None))  # and a bad --field
    store = open_store(s)
    img, txt = s.encoders()
    keep = getattr(args, "candidate_keep", None)
    return Index.create(store, img, txt, k=s.k, p=s.p, recreate=args.recreate,
                        recipe=recipe, raw_dtype=getattr(args, "raw_dtype", None) or "float32",
                        fields=fields, **({} if keep is None else {"candidate_keep": keep}))


def _recipe(args):
    """--recipe NAME|SETTINGS as a Recipe, or None (keep the index's / the default one)."""
    text = getattr(args, "recipe", None)
    if not text:
        return None
    from asif_index.recipe import Recipe

    return Recipe.parse(text)


def _open_maintenance(args):
    """The live index without encoders: what deletes and anchor updates need (they read the
    stored raw embeddings, never an input), so they start without loading the models."""
    from connectors import open_store
    from connectors.index import Index

    s = _settings(args)
    idx = Index.open_writer(open_store(s, must_exist=True), cache_dir=str(s.cache_dir))
    idx.query_keep = s.query_keep
    return idx


def _open_readonly(args):
    """(store, live anchor set) without encoders: the fast path of stats and anchors list."""
    from connectors import open_store
    from connectors.readonly import live_anchors

    s = _settings(args)
    store = open_store(s, must_exist=True)
    return store, live_anchors(store, s.cache_dir)


def cmd_serve(args) -> int:
    from asif_index._optional import require
    from asif_index.errors import ConfigError

    uvicorn = require("uvicorn", "asif-index serve")
    from connectors.service import ServiceSettings, create_app

    extra = {}
    if args.image_root:
        extra["image_roots"] = args.image_root
    if args.anonymous:
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError("--anonymous serves without keys: only on 127.0.0.1 (drop --host "
                              "or set ASIF_SERVE_READ_KEYS)")
        extra["allow_anonymous"] = True
    settings = ServiceSettings(**extra)
    s = _settings(args)

    def rebuild_into(index, k, p):
        # the CLI's own rebuild: a new physical index, then the alias switched in one write
        from connectors import open_store, registry_of
        from connectors.rebuild import rebuild, set_alias

        physical = f"{s.collection}_v{int(__import__('time').time())}"
        new, n = rebuild(index, open_store(s, physical, resolve=False), k=k, p=p)
        set_alias(registry_of(s), s.collection, physical)
        return new, n

    import hashlib

    where = hashlib.sha1(str(s.url or (s.path and s.path.resolve())).encode()).hexdigest()[:8]
    jobs_dir = s.cache_dir / "jobs" / f"{s.backend}-{s.collection}-{where}"
    app = create_app(_open(args), settings, jobs_dir=jobs_dir, rebuild=rebuild_into)
    if app.state.resumed_jobs:
        print(f"resuming {len(app.state.resumed_jobs)} unfinished job(s) from {jobs_dir}",
              flush=True)
    print(f"serving {args.name} on http://{args.host}:{args.port} (API docs: /docs)", flush=True)
    import time

    # Ctrl-C: open requests get at most 2 s, then the jobs stop (each resumes at its
    # checkpoint on the next start) and the process leaves without torch's slow teardown
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=2)
    t0 = time.perf_counter()
    app.state.wait_idle()  # a background refresh finishes before the database closes
    app.state.jobs.stop(timeout=1.0)  # a running job is checkpointed batch by batch
    print(f"stopped serving {args.name} ({time.perf_counter() - t0:.1f} s to stop; unfinished "
          "jobs resume on the next start)", flush=True)
    if getattr(args, "console", False):
        from asif_cli.process import exit_now

        exit_now(0)
    return 0


def _source(args):
    from connectors.pipeline import (
        read_captions_table,
        read_image_folder,
        read_texts,
        read_webdataset,
    )

    # Tables, folders and text files are read up front (paths and captions, not pixels), so
    # progress bars know their total; WebDataset shards stream.
    from asif_index.errors import ConfigError

    sidecar = getattr(args, "metadata", None)
    if sidecar and not getattr(args, "folder", None):
        raise ConfigError("--metadata (a per-file sidecar) goes with --folder; a captions "
                          "table's own columns are its metadata")
    if getattr(args, "captions", None):
        # anchors keep no metadata (their parser has no --columns)
        cols = getattr(args, "columns", "") if hasattr(args, "columns") else ""
        cols = None if cols is None else [c.strip() for c in cols.split(",") if c.strip()]
        items = list(read_captions_table(args.captions, args.images, args.image_column,
                                         args.caption_column, args.split, cols))
        return _fetched(args, items), args.captions
    if getattr(args, "folder", None):
        items = list(read_image_folder(args.folder, follow_symlinks=getattr(
            args, "follow_symlinks", False)))
        if sidecar:
            from connectors.pipeline.metadata import read_sidecar, with_sidecar

            items, unused = with_sidecar(items, read_sidecar(sidecar), args.folder)
            if unused:
                print(f"warning: {len(unused)} --metadata entries match no image in "
                      f"{args.folder} (first: {unused[0]!r})", file=sys.stderr)
        return items, args.folder
    if getattr(args, "texts", None):
        return list(read_texts(args.texts, args.text_column)), args.texts
    if getattr(args, "webdataset", None):
        return read_webdataset(args.webdataset), ",".join(args.webdataset)
    raise ConfigError("give a source: --captions TABLE [--images DIR], --folder DIR, "
                      "--texts FILE or --webdataset SHARD...")


def _fetched(args, items: list):
    from asif_index.errors import ConfigError
    from connectors.pipeline.fetch import FetchingSource, FetchLimits, needs_fetch

    folder = getattr(args, "fetch_dir", None)
    if not needs_fetch(items):
        return items
    if not folder:
        first = next(it.url for it in items if it.url)
        raise ConfigError(f"table '{args.captions}' holds image URLs ('{first[:120]}'); give "
                          "--fetch-dir DIR to download them (nothing was read or written)")
    limits = FetchLimits(max_bytes=max(1, int(args.fetch_max_mb * 2**20)),
                         timeout_s=min(float(args.fetch_timeout), 600.0))
    return FetchingSource(items, folder, limits)


def cmd_init(args) -> int:
    idx = _open(args, create=True)
    print(json.dumps(idx.stats(), indent=1))
    return 0


def cmd_anchors_add(args) -> int:
    from connectors.pipeline import ingest_anchors

    idx = _open(args)
    src, name = _source(args)
    _restart(args)
    s = ingest_anchors(idx, src, batch_size=args.batch_size, checkpoint=args.checkpoint,
                       source_name=name, index_key=_settings(args).collection,
                       item_pass=_item_pass(args, idx))
    print(s.report())
    print(f"anchors: {len(idx.anchors)} (version {idx.anchors.version})")
    return 0


def _item_pass(args, idx):
    """--ray: the update's pass over the stored items runs on Ray workers, one id range each."""
    if getattr(args, "ray", None) is None:
        return None
    from connectors.distributed import connect
    from connectors.distributed.updates import RayItemPass

    connect(_ray_address(args))
    return RayItemPass(_settings(args), idx.store.name, workers=args.ray_workers)


def _ray_address(args) -> str | None:
    """--ray alone means "local" (None: a local Ray, or the cluster RAY_ADDRESS names)."""
    return None if args.ray == "local" else args.ray


def cmd_anchors_remove(args) -> int:
    from tqdm import tqdm

    import numpy as np

    idx = _open_maintenance(args)
    idx.anchors.rows_of(np.unique(np.asarray(args.ids, np.int64)))  # unknown ids: error first
    rp = _item_pass(args, idx)
    with tqdm(total=idx.store.count_items(version=idx.version), unit="item",
              desc="re-project", dynamic_ncols=True, disable=rp is not None) as bar:
        r = idx.remove_anchors(args.ids, progress=lambda n: bar.update(n - bar.n), item_pass=rp)
    print(f"removed {len(r.removed_ids)} anchors: version {r.version}, re-projected "
          f"{r.items_touched} of {r.items_scanned} items in {r.seconds:.2f}s")
    return 0


def cmd_anchors_status(args) -> int:
    from connectors.updates import status

    if args.resume:
        idx = _open_maintenance(args)
        r = idx.resume_update(item_pass=_item_pass(args, idx))
        print(f"resumed: version {r.version}, re-projected {r.items_touched} items")
        store, n = idx.store, len(idx.anchors)
    else:
        store, anchors = _open_readonly(args)
        n = len(anchors)
    print(json.dumps({**status(store), "anchors": n}, indent=1))
    return 0


def cmd_anchors_rebuild(args) -> int:
    from connectors import open_store, registry_of
    from connectors.rebuild import rebuild, resolve_alias, set_alias

    s = _settings(args)
    idx = _open(args)
    reg = registry_of(s)
    alias = s.collection
    physical = f"{alias}_v{int(__import__('time').time())}"
    from tqdm import tqdm

    with tqdm(total=idx.store.count_items(version=idx.version), unit="item", desc="rebuild",
              dynamic_ncols=True) as bar:
        new, n = rebuild(idx, open_store(s, physical, resolve=False), k=args.k, p=args.p,
                         progress=lambda done: bar.update(done - bar.n), recipe=_recipe(args))
    old = resolve_alias(reg, alias)
    set_alias(reg, alias, physical)
    print(f"rebuilt {n} items into '{physical}' (k={new.k}, p={new.p}, recipe "
          f"{new.anchors.recipe.name}); alias '{alias}' now "
          f"points at it (was '{old}'; drop that index when no reader uses it)")
    return 0


def _classify_with_head(args) -> int:
    from asif_cli import remote
    from asif_index.errors import ConfigError

    if remote.service_url(args):
        raise ConfigError("--head runs against the database directly; unset --service / "
                          "ASIF_SERVICE_URL")
    if args.labels or args.template:
        raise ConfigError("--head brings its own labels: drop --labels and --template")
    images = [Path(x) for x in args.images] if args.images else _folder_images(args.folder)
    idx = _open(args)
    head = idx.text_head(args.head)
    if head.meta.get("anchor_version", idx.version) != idx.version:
        print(f"note: head '{args.head}' was trained at anchor version "
              f"{head.meta['anchor_version']}; the index is at {idx.version} (new anchors carry "
              "no weight until you retrain it)", file=sys.stderr)
    res = idx.encoders["image"].encode_safe(images)
    for e in res.errors:
        print(f"skipped: {e}", file=sys.stderr)
    kept = [images[i] for i in res.kept]
    if not kept:
        return 2
    pred, probs = idx.classify_with_head(res.embeddings, head)
    for img, lbl, pr in zip(kept, pred, probs):
        print_prediction(str(img), lbl, dict(zip(head.labels, pr.tolist())), head.labels,
                         args.json)
    return 0


def cmd_ingest(args) -> int:
    from connectors.pipeline import ingest_items
    from connectors.pipeline.metadata import parse_payload_args, source_name

    from connectors.image_roots import parse_root_specs, register, relativise

    parse_payload_args(args.payload)  # bad flags fail before the encoders load
    source_name(args.source, "x")
    roots = parse_root_specs(args.image_root)
    if roots and args.ray is not None:
        from asif_index.errors import ConfigError

        raise ConfigError("--image-root runs in the single-process ingest only; drop --ray")

    if args.ray is not None:
        return _ingest_on_ray(args)
    src, name = _source(args)  # a bad table or sidecar fails before the encoders load
    if roots:
        src = relativise(src if isinstance(src, list) else list(src), roots)
    idx = _open(args)
    register(idx.store, roots)
    for head in args.tag_with or []:
        idx.taggers[head] = idx.text_head(head)
    _restart(args)
    s = ingest_items(idx, src, args.modality, args.batch_size, args.checkpoint, name,
                     index_key=_settings(args).collection, item_source=args.source,
                     fields=parse_payload_args(args.payload))
    print(s.report())
    return 0


def _ingest_on_ray(args) -> int:
    """``ingest --ray``: the same stages on a Ray cluster (connectors.distributed.ingest)."""
    from pydantic import ValidationError

    from asif_index.config import describe_validation
    from asif_index.errors import ConfigError
    from connectors.distributed.ingest import RayIngestOptions, ingest_on_ray
    from connectors.pipeline.metadata import parse_payload_args

    if args.tag_with:
        raise ConfigError("--tag-with runs in the single-process ingest only; drop --ray, or "
                          "tag afterwards with a single-process re-ingest of the same source")
    try:
        opts = RayIngestOptions(
            address=_ray_address(args), encoders=args.ray_encoders,
            projectors=args.ray_projectors, writers=args.ray_writers,
            gpus_per_encoder=args.ray_gpus_per_encoder, batch_size=args.batch_size or 256,
            checkpoint=args.checkpoint)
    except ValidationError as exc:
        raise ConfigError(describe_validation(exc)) from None
    s = _settings(args)
    if getattr(args, "webdataset", None):
        summary = ingest_on_ray(s, None, args.modality, opts, ",".join(args.webdataset),
                                webdataset=args.webdataset, restart=args.restart,
                                item_source=args.source, fields=parse_payload_args(args.payload))
    else:
        src, name = _source(args)
        summary = ingest_on_ray(s, src, args.modality, opts, name, restart=args.restart,
                                item_source=args.source, fields=parse_payload_args(args.payload))
    print(summary.report())
    return 0


def _restart(args) -> None:
    if getattr(args, "restart", False) and args.checkpoint and Path(args.checkpoint).exists():
        Path(args.checkpoint).unlink()


def _filter(texts):
    """--filter values as one validated filter (connectors.filters), None for none."""
    from connectors.filters import parse_cli

    return parse_cli(texts)


def _check_search_inputs(args) -> None:
    from asif_index.errors import ConfigError

    given = [f for f, v in (("--text", args.text), ("--image", args.image), ("--item", args.item),
                            ("--queries", args.queries)) if v]
    if not given:
        raise ConfigError("give --text, --image (or both, a composed query), --item or --queries")
    if len(given) > 1 and set(given) != {"--text", "--image"}:
        raise ConfigError(f"{' and '.join(given)} cannot be combined: only --text with --image "
                          "makes a composed query")
    if args.image_weight is not None and set(given) != {"--text", "--image"}:
        raise ConfigError("--image-weight applies to a composed query: give --text and --image")


def cmd_search(args) -> int:
    from asif_cli import remote
    from asif_index.methods.unified import DEFAULT_IMAGE_WEIGHT

    _check_search_inputs(args)
    qb = qbnorm_choice(args)  # a bad combination fails before the database is opened
    flt = _filter(args.filter)  # so does a malformed filter

    if remote.service_url(args):
        return remote.search(args, flt, qb)
    idx = _open(args)
    keep = args.query_keep
    if args.queries:  # one process, many queries: one JSON line per query
        for line in query_lines(args.queries):
            hits = idx.search(text=line, limit=args.limit, filter=flt, qbnorm=qb,
                              query_keep=keep, exact=args.exact, candidates=args.candidates,
                              offset=args.offset)
            print(json.dumps({"query": line, "hits": [hit_dict(h) for h in hits]}))
        return 0
    if args.item:
        res = idx.similar(args.item, args.limit, flt, keep, exact=args.exact,
                          candidates=args.candidates, offset=args.offset)
        print_hits(res.hits, args.json, f"item {args.item}")
        return 0
    w = DEFAULT_IMAGE_WEIGHT if args.image_weight is None else args.image_weight
    res = idx.search_result(text=args.text, image=args.image, limit=args.limit, filter=flt,
                            image_weight=w, qbnorm=qb, query_keep=keep, exact=args.exact,
                            candidates=args.candidates, offset=args.offset)
    what = (f"image {args.image} (weight {w:g}) + {args.text!r}" if args.text and args.image
            else repr(args.text) if args.text else f"image {args.image}")
    print_hits(res.hits, args.json, what, res.qbnorm)
    return 0


def _folder_images(folder: str) -> list[Path]:
    from asif_index.errors import ConfigError
    from connectors.pipeline.readers import IMAGE_EXTS

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"image folder '{root}' (--folder) does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ConfigError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under '{root}'")
    return files


def cmd_classify(args) -> int:
    from asif_cli import remote

    if args.head:
        return _classify_with_head(args)
    if not args.labels:
        from asif_index.errors import ConfigError

        raise ConfigError("give --labels cat,dog (zero-shot) or --head NAME (a head from "
                          "`asif-index train-text-classifier`)")
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if len(labels) < 2:
        from asif_index.errors import ConfigError

        raise ConfigError("give at least two comma-separated labels (--labels cat,dog)")
    images = [Path(x) for x in args.images] if args.images else _folder_images(args.folder)
    if remote.service_url(args):
        return remote.classify(args, images, labels)
    idx = _open(args)
    kw = {"templates": args.template} if args.template else {}
    res = idx.encoders["image"].encode_safe(images)  # unreadable images: reported, not fatal
    for e in res.errors:
        print(f"skipped: {e}", file=sys.stderr)
    kept = [images[i] for i in res.kept]
    pred, scores = (idx.classify_embeddings(res.embeddings, labels, reduce=args.reduce, **kw)
                    if kept else ([], []))
    for img, lbl, sc in zip(kept, pred, scores):
        print_prediction(str(img), lbl, dict(zip(labels, sc)), labels, args.json)
    return 0 if kept else 2


def cmd_explain(args) -> int:
    from asif_cli import remote

    if remote.service_url(args):
        return remote.explain(args)
    import dataclasses

    from asif_cli.args import explain_qbnorm

    qb = explain_qbnorm(args)
    idx = _open(args)
    ex = idx.explain(args.item, text=args.text, image=args.image, top=args.top, qbnorm=qb)
    print_explanation(args.item, dataclasses.asdict(ex), args.json)
    return 0



def cmd_anchors_list(args) -> int:
    """Anchor ids with captions and sources (the ids 'anchors remove' takes)."""
    _, a = _open_readonly(args)
    shown = 0
    for r, (aid, pl) in enumerate(zip(a.ids.tolist(), a.payloads)):
        if args.grep and args.grep.lower() not in pl.caption.lower():
            continue
        if args.source and pl.source != args.source:
            continue
        if args.json:
            print(json.dumps({"id": aid, "caption": pl.caption, "image_ref": pl.image_ref,
                              "source": pl.source}))
        else:
            print(f"{aid}\t{pl.caption}\t{pl.image_ref}\t{pl.source}")
        shown += 1
        if shown >= args.limit:
            break
    if not args.json:
        print(f"{shown} of {len(a)} anchors shown (version {a.version})", file=sys.stderr)
    return 0


def cmd_items_delete(args) -> int:
    if not (args.ids or args.filter):
        from asif_index.errors import ConfigError

        raise ConfigError("say which items: --ids ID,ID (as 'search' prints them) or --filter "
                          "field=value")
    flt = _filter(args.filter)  # a malformed filter fails before the database is opened
    idx = _open_maintenance(args)
    ids = [x.strip() for x in (args.ids or "").split(",") if x.strip()]
    n = idx.delete_items(ids, flt)
    print(f"deleted {n} items (anchor version {idx.version}); "
          f"{idx.store.count_items(version=idx.version)} remain")
    return 0


def cmd_indexes_list(args) -> int:
    from connectors import list_indexes

    rows = list_indexes(_settings(args))
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print("no asif indexes in this database ('asif-index init' creates one)")
    for r in ([] if args.json else rows):
        alias = f"  (alias: {', '.join(r['aliases'])})" if r["aliases"] else ""
        print(f"{r['name']}\tversion {r['anchor_version']}\tk={r['k']}\t{r['items']} items{alias}")
    return 0


def cmd_index_drop(args) -> int:
    from connectors import drop_index

    if not args.yes:
        from asif_index.errors import ConfigError

        raise ConfigError(f"dropping '{args.index}' deletes its anchors and items for good: "
                          "add --yes to confirm")
    drop_index(_settings(args), args.index, force=args.force)
    print(f"dropped index '{args.index}'")
    return 0


def cmd_index_relocate(args) -> int:
    from connectors import open_store
    from connectors.image_roots import relocate

    old, new = relocate(open_store(_settings(args), must_exist=True), args.root, args.folder)
    print(f"image root '{args.root}': {old} -> {new}")
    return 0


def cmd_index_export(args) -> int:
    """The live items as a Parquet or JSON Lines table (read-only; no encoders, no torch)."""
    from connectors import open_store
    from connectors.export import export_items
    from connectors.readonly import live_manifest

    store = open_store(_settings(args), must_exist=True)
    v = live_manifest(store).version
    n = export_items(store, v, args.out)
    print(f"exported {n} items (anchor version {v}) to {args.out}")
    return 0


def cmd_stats(args) -> int:
    from connectors.readonly import index_stats

    print(json.dumps(index_stats(*_open_readonly(args)), indent=1))
    return 0


def cmd_index_migrate(args) -> int:
    """Copy an index (all versions) from another store into the one named by --backend/--path."""
    from connectors import open_store
    from connectors.migrate import copy_index

    s = _settings(args)
    name = args.from_name or s.collection
    if args.from_qdrant_local:
        from connectors.qdrant import QdrantStore

        if not Path(args.from_qdrant_local).is_dir():
            from asif_index.errors import ConfigError

            raise ConfigError(f"'{args.from_qdrant_local}' (--from-qdrant-local) is not a folder")
        src = QdrantStore(name, path=str(args.from_qdrant_local))
    else:
        from connectors.milvus import MilvusStore

        src = MilvusStore(name, uri=str(args.from_milvus), timeout=s.request_timeout)
    dst = open_store(s, resolve=False)
    try:
        got = copy_index(src, dst)
    finally:
        src.close()
    print(f"copied index '{name}' from {src.location} to {dst.location}: {got['anchors']} anchors,"
          f" {got['points']} stored points, anchor version {got['version']}")
    return 0


def cmd_servers(args) -> int:
    from connectors.servers import start_milvus_container, start_qdrant_container

    for name, start in (("qdrant", start_qdrant_container), ("milvus", start_milvus_container)):
        if args.which in (name, "both"):
            c, url = start()
            print(f"{name}: {url} (container {c.short_id}; stop with docker stop {c.short_id})")
    return 0


def register(sub, common) -> None:
    def db(p):
        common(p)
        p.add_argument("--backend", choices=["qdrant", "milvus"],
                       help="database engine (default qdrant; ASIF_BACKEND)")
        p.add_argument("--url", help="server URL/URI (Qdrant http://host:6333, Milvus "
                       "http://host:19530); not with --path")
        p.add_argument("--path", type=Path, help="embedded database: Qdrant folder or Milvus "
                       "Lite .db file (default ./asif-qdrant or ./asif.db)")
        p.add_argument("--api-key", help="API key (Qdrant) or token (Milvus)")
        p.add_argument("--name", help="index name (default asif; collections NAME_items, "
                       "NAME_anchors, NAME_meta)")
        p.add_argument("--timeout", type=positive_float, help="seconds one database request "
                       "may take (default 30; ASIF_REQUEST_TIMEOUT)")

    def recipe_option(p, what="default: tuned, chosen on the dev data"):
        p.add_argument("--recipe", help="how inputs become relative vectors: tuned (image "
                       "k=3200, text p=4, cross-modal results re-ranked by query-bank "
                       "normalisation), asif (the paper's, published), centered, or settings "
                       f"like center,k_image=3200,p_text=4,qbnorm=0.05 ({what}; "
                       "docs/evaluation.md compares them)")

    def service(p):
        p.add_argument("--service", metavar="URL",
                       help="ask a running 'asif-index serve' at URL instead of opening the "
                            "database and encoders here (default: ASIF_SERVICE_URL; its key "
                            "from ASIF_SERVICE_KEY)")

    def ray_update_options(p):
        g = p.add_argument_group(
            "item pass on a Ray cluster (pip install 'asif-index[ray]'; index on a server)")
        g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="re-project the stored items on Ray workers, one range of point "
                            "ids each (alone: a local Ray, or the cluster RAY_ADDRESS names)")
        g.add_argument("--ray-workers", type=positive_int, default=4, metavar="N",
                       help="id ranges, one Ray task each (default 4)")

    def source(p):
        p.add_argument("--captions", help="captions table (csv/tsv/jsonl/parquet)")
        p.add_argument("--images", help="folder the table's image paths are relative to")
        p.add_argument("--image-column", default="image", help="image column (default image)")
        p.add_argument("--caption-column", default="caption",
                       help="caption column (default caption)")
        p.add_argument("--split", help="only rows of this split (a 'split' column)")
        p.add_argument("--fetch-dir", metavar="DIR", help="with --captions: download the "
                       "table's http(s) image URLs into DIR (kept by content hash; each URL "
                       "bounded by --fetch-max-mb and --fetch-timeout; failures are skipped "
                       "with the reason)")
        p.add_argument("--fetch-max-mb", type=positive_float, default=20.0, metavar="MB",
                       help="largest image a URL may send (default 20)")
        p.add_argument("--fetch-timeout", type=positive_float, default=20.0, metavar="S",
                       help="seconds one URL may take, connect to last byte (default 20)")
        p.add_argument("--folder", help="image folder: its images, and those of each "
                       "sub-folder with the sub-folder's name as 'label' (hidden folders, "
                       "FIFOs and devices are skipped and reported)")
        p.add_argument("--follow-symlinks", action="store_true",
                       help="with --folder: follow symlinks that point outside the folder "
                            "(skipped and reported by default)")
        p.add_argument("--texts", help="text file (one per line) or table")
        p.add_argument("--text-column", default="text", help="text column (default text)")
        p.add_argument("--webdataset", nargs="+", help="WebDataset .tar shards")
        p.add_argument("--checkpoint", help="checkpoint file: a killed run resumes from it")
        p.add_argument("--restart", action="store_true",
                       help="ignore (delete) the --checkpoint and start from the first item")

    p = sub.add_parser("init", help="create an index in the database")
    db(p)
    kp_options(p, " in this index")
    recipe_option(p)
    p.add_argument("--candidate-keep", type=int, metavar="N",
                   help="entries of each item's candidate vector, which two-stage search's "
                        "first stage reads (default 0: none, every search is one exact "
                        "stage, the faster on Qdrant Edge in docs/benchmarks.md 7b)")
    p.add_argument("--raw-dtype", choices=["float32", "float16"],
                   help="how raw embeddings are stored (read only by anchor updates): "
                        "float16 halves them, and items are projected from the rounded "
                        "embedding so updates stay exact (default float32)")
    p.add_argument("--field", action="append", metavar="NAME:TYPE",
                   help="declare a payload field (repeatable): keyword, integer, float, "
                   "bool or datetime (ISO 8601 text); indexed on Qdrant, and every write is type-checked against it: "
                   "--field album:keyword --field year:integer ('source' is always declared)")
    p.add_argument("--recreate", action="store_true", help="replace an existing index")
    p.set_defaults(func=cmd_init)

    a = sub.add_parser("anchors", help="manage anchor pairs").add_subparsers(dest="anchors_cmd", required=True)
    p = a.add_parser("add", help="add image-caption pairs as anchors (live: stored items are "
                     "re-projected exactly)",
                     epilog="example: asif-index anchors add --captions pairs.tsv --images "
                     "pairs/ --checkpoint anchors.ckpt")
    db(p)
    source(p)
    p.add_argument("--batch-size", type=positive_int, default=4096,
                   help="pairs per anchor update (default 4096): each update re-projects the "
                        "stored items it touches once, so fewer, larger batches cost less")
    ray_update_options(p)
    p.set_defaults(func=cmd_anchors_add)
    p = a.add_parser("remove", help="remove anchors by id (stored items re-projected exactly)")
    db(p)
    p.add_argument("--ids", required=True, type=anchor_ids,
                   help="anchor ids: comma-separated, ranges allowed (17,42,100-120)")
    ray_update_options(p)
    p.set_defaults(func=cmd_anchors_remove)
    p = a.add_parser("status", help="live version, pending update, stored points")
    db(p)
    p.add_argument("--resume", action="store_true", help="finish an interrupted update")
    ray_update_options(p)
    p.set_defaults(func=cmd_anchors_status)
    p = a.add_parser("list", help="anchor ids with captions, image references and sources "
                     "(the ids 'anchors remove' takes)",
                     epilog="example: asif-index anchors list --grep dog --limit 20")
    db(p)
    p.add_argument("--grep", help="only captions containing this text (case-insensitive)")
    p.add_argument("--source", help="only anchors added from this source")
    p.add_argument("--limit", type=positive_int, default=100, help="at most this many "
                   "(default 100)")
    p.add_argument("--json", action="store_true", help="one JSON line per anchor")
    p.set_defaults(func=cmd_anchors_list)
    p = a.add_parser("rebuild", help="re-project everything into a new index (new --k/--p) "
                     "and switch the alias to it")
    db(p)
    kp_options(p, " in the new index")
    recipe_option(p, "default: the index's own; a rebuild recomputes its statistics")
    p.set_defaults(func=cmd_anchors_rebuild)

    p = sub.add_parser("ingest", help="embed, project and store items")
    db(p)
    source(p)
    p.add_argument("--modality", choices=["image", "text", "both"], default="image",
                   help="what to embed from each source item (default image)")
    p.add_argument("--batch-size", type=positive_int,
                   help="items per database write (default: 128 Qdrant, 512 Milvus)")
    p.add_argument("--source", metavar="NAME", help="the 'source' field of every item "
                   "(default: the input's file or folder name); items delete --filter "
                   "source=NAME removes the run")
    p.add_argument("--payload", action="append", metavar="KEY=VALUE",
                   help="a field on every item (repeatable; numbers and true/false typed): "
                   "--payload album=alps --payload year=2024")
    p.add_argument("--image-root", action="append", metavar="NAME=DIR",
                   help="store paths under DIR relative to the root NAME (repeatable), so a "
                   "moved folder is one 'asif-index index relocate NAME NEWDIR'")
    p.add_argument("--metadata", metavar="FILE", help="with --folder: per-image fields, a "
                   "JSON object {file: {field: value}} or a table with a 'file' column")
    p.add_argument("--columns", metavar="A,B", help="with --captions: the table columns to "
                   "keep as fields (default: all but image, caption, split)")
    p.add_argument("--tag-with", action="append", metavar="HEAD",
                   help="label every item with this text-trained head: payload fields "
                   "tag_HEAD and tag_HEAD_p, filterable (repeatable)")
    r = p.add_argument_group(
        "on a Ray cluster (pip install 'asif-index[ray]')",
        "with --ray, --checkpoint is a directory on storage every node sees (default: "
        "<cache-dir>/ray-checkpoints); --batch-size is rows per Ray batch (default 256)")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the stages on Ray: alone, a local Ray (or the cluster RAY_ADDRESS "
                        "names); with an address, that cluster (ray://host:10001, host:6379)")
    r.add_argument("--ray-encoders", type=positive_int, default=1, metavar="N",
                   help="encode actors per modality, one model each (default 1)")
    r.add_argument("--ray-projectors", type=positive_int, default=1, metavar="N",
                   help="project actors, each holding the anchor engine (default 1)")
    r.add_argument("--ray-writers", type=positive_int, metavar="N",
                   help="writer actors (default: 1 for an embedded database, which admits "
                        "only one; 2 for a server)")
    r.add_argument("--ray-gpus-per-encoder", type=float, metavar="G",
                   help="GPUs per encode actor (default: 1 when the cluster has GPUs, else 0)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="search items with a text, an image or a stored item",
                       epilog="examples: asif-index search --text 'a dog on grass' --filter "
                       "modality=image --limit 5  |  asif-index search --queries q.txt --json")
    db(p)
    service(p)
    p.add_argument("--text", help="query text (with --image: a composed query)")
    p.add_argument("--image", help="query image file (with --text: a composed query, e.g. "
                   "this photo + 'at night')")
    p.add_argument("--qbnorm", nargs="?", const=True, type=positive_float, metavar="T",
                   help="re-rank the top 100 by query-bank normalisation at temperature T "
                        "whatever the results' modality (alone: the recipe's, 0.05). By "
                        "default an index with the tuned recipe applies it when the results "
                        "are all of the other modality (a text query over photos). Scores are "
                        "in [0, 1] either way (README: 'One score')")
    p.add_argument("--no-qbnorm", action="store_true",
                   help="the database's plain ranking, even where the recipe re-ranks")
    p.add_argument("--image-weight", type=open_unit_float, default=None,
                   help="the image's share of a composed --image + --text query (default 0.15, "
                   "the best on Flickr8k dev: an image matches photos far more strongly than "
                   "a caption does)")
    p.add_argument("--item", help="a stored item's id (the third column search prints): "
                   "items like it")
    p.add_argument("--queries", help="text file, one query per line: results as JSON lines, "
                   "in one process")
    p.add_argument("--limit", type=positive_int, default=10,
                   help="results per query (default 10, at most 1000)")
    p.add_argument("--offset", type=non_negative_int, default=0, metavar="N",
                   help="skip the first N results: the next page (ties ordered by item id, "
                   "so pages neither skip nor repeat a hit; offset + limit <= 10000)")
    p.add_argument("--filter", action="append", help="a condition, ANDed (repeatable): "
                   "field=value, field!=value, 'year>=2010' (> >= < <=; dates too: "
                   "'taken>=2024-05-01'), 'album in [a,b]', 'album not in [a,b]', 'field exists', or a JSON filter ({\"or\": [...]}); "
                   "e.g. --filter modality=image --filter label=cat")
    p.add_argument("--query-keep", type=query_keep, help="largest query entries sent to the database: a number, "
                   "or 'all' (default: ASIF_QUERY_KEEP, else all)")
    p.add_argument("--exact", action="store_true",
                   help="one exact stage over every item (default: two stages, candidates "
                        "from each item's trimmed vector, then exact rescoring; every hit's "
                        "score is exact either way)")
    p.add_argument("--candidates", type=positive_int, metavar="N",
                   help="the first stage's candidate count (default: by collection size; "
                        "docs/benchmarks.md gives the recall of each)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("classify", help="zero-shot classify images (scores of every label)",
                       epilog="example: asif-index classify --folder photos/ --labels cat,dog,car")
    db(p)
    service(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--images", nargs="+", help="image files to classify")
    g.add_argument("--folder", help="classify every image under this folder")
    p.add_argument("--labels", help="comma-separated class names (zero-shot)")
    p.add_argument("--head", help="a head from `asif-index train-text-classifier` instead of "
                   "--labels (trained on text only)")
    p.add_argument("--json", action="store_true", help="one JSON line per image with all scores")
    p.add_argument("--template", action="append",
                   help="prompt template with {} for the label, e.g. 'a photo of a {}' "
                        "(repeatable; default: three built-in templates)")
    p.add_argument("--reduce", choices=["mean", "max"], default="mean",
                   help="how a label's templates combine (default mean)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("explain", help="which anchors make an item match a query")
    db(p)
    service(p)
    p.add_argument("--item", required=True, help="item id, as 'search' prints it")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", help="query text")
    g.add_argument("--image", help="query image file")
    p.add_argument("--top", type=positive_int, default=10,
                   help="anchors to show (default 10)")
    p.add_argument("--qbnorm", nargs="?", const=True, type=positive_float, metavar="T",
                   help="decompose the score as 'search --qbnorm T' ranks it")
    p.add_argument("--no-qbnorm", action="store_true",
                   help="decompose the plain ranking's score (the similarity)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("stats", help="counts and manifest of an index")
    db(p)
    p.set_defaults(func=cmd_stats)

    it = sub.add_parser("items", help="delete stored items").add_subparsers(
        dest="items_cmd", required=True)
    p = it.add_parser("delete", help="delete items by id or payload filter (readers pinned at an "
                      "older anchor version keep their snapshot)",
                      epilog="examples: asif-index items delete --ids 3f2a...,9b1c...  |  "
                      "asif-index items delete --filter source=old-crawl")
    db(p)
    p.add_argument("--ids", help="comma-separated item ids, as 'search' prints them")
    p.add_argument("--filter", action="append", help="a condition, ANDed (repeatable): as "
                   "search --filter (field=value, 'year>=2010', 'album in [a,b]', JSON)")
    p.set_defaults(func=cmd_items_delete)

    p = sub.add_parser("indexes", help="list the asif indexes of a database",
                       epilog="example: asif-index indexes list --path ./asif-qdrant --json")
    db(p)
    p.add_argument("action", nargs="?", choices=["list"], default="list",
                   help="'list' (the default, and the only action)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_indexes_list)

    ix = sub.add_parser("index", help="drop, export, relocate or migrate an index"
                        ).add_subparsers(dest="index_cmd", required=True)
    p = ix.add_parser("drop", help="delete an index (its anchors and items) for good",
                      epilog="example: asif-index index drop photos_v1700000000 --yes")
    db(p)
    p.add_argument("index", help="index name, as 'asif-index indexes' lists it")
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    p.add_argument("--force", action="store_true", help="drop even while an alias points at it")
    p.set_defaults(func=cmd_index_drop)
    p = ix.add_parser("relocate", help="point an image root at the folder its photos moved "
                      "to (one document write; items keep their relative paths)",
                      epilog="example: asif-index index relocate photos /mnt/new/photos "
                      "--backend qdrant --path ./db")
    db(p)
    p.add_argument("root", help="the root's name, as ingest --image-root NAME=DIR gave it")
    p.add_argument("folder", help="where the photos are now")
    p.set_defaults(func=cmd_index_relocate)
    p = ix.add_parser("export", help="write the live items (id, modality, payload, relative "
                      "vector, fold, raw embedding) as a Parquet or JSON Lines table for "
                      "other tools; read-only",
                      epilog="example: asif-index index export items.parquet --backend qdrant "
                      "--path ./db")
    db(p)
    p.add_argument("out", help="the file to write: NAME.parquet or NAME.jsonl")
    p.set_defaults(func=cmd_index_export)
    p = ix.add_parser("migrate", help="copy an index, every version of it, into the store named "
                      "by --backend/--path/--url (e.g. from an asif-index 0.1 Qdrant local-mode "
                      "folder into the Qdrant engine)",
                      epilog="example: asif-index index migrate --from-qdrant-local old-qdrant/ "
                      "--backend qdrant --path new-qdrant/ --name photos")
    db(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-qdrant-local", type=Path, help="folder written by qdrant-client's "
                   "local mode (the embedded Qdrant of asif-index 0.1)")
    g.add_argument("--from-milvus", help="Milvus Lite .db file or Milvus server URI")
    p.add_argument("--from-name", help="index name in the source (default: --name)")
    p.set_defaults(func=cmd_index_migrate)

    p = sub.add_parser("serve", help="serve the index over HTTP (search, classify, explain; "
                       "API docs at /docs)",
                       epilog="API keys come from the environment, never from flags (a flag is "
                       "visible to every user of the machine): ASIF_SERVE_READ_KEYS and "
                       "ASIF_SERVE_ADMIN_KEYS, comma-separated. example: "
                       "ASIF_SERVE_READ_KEYS=$(openssl rand -hex 16) asif-index serve --path "
                       "./db --image-root ./photos")
    db(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    p.add_argument("--image-root", action="append", type=Path, default=None,
                   help="folder whose images the service may read and thumbnail (repeatable; "
                        "default: none)")
    p.add_argument("--anonymous", action="store_true",
                   help="serve without API keys (only for a demo on 127.0.0.1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("servers", help="start the official Qdrant/Milvus containers (Docker)")
    p.add_argument("which", choices=["qdrant", "milvus", "both"], nargs="?", default="both",
                   help="which server to start (default both)")
    p.set_defaults(func=cmd_servers)
    return db
