"""Distributed ingestion on Ray Data: the single-process pipeline's stages, spread over a cluster.

    read (tasks)  ->  decode (CPU tasks)  ->  encode (actor pool, one model per actor, a GPU
    each when the cluster has them)  ->  project (actors holding the anchor engine resident)
    ->  write (a Ray ``Datasink`` feeding writer actors that hold the index open)

Every stage is deterministic, as in ``connectors.pipeline``: ids are content hashes and
writes are upserts, so a block that Ray retries (a worker died, an actor restarted) rewrites
the same points. Resume after the driver dies is Ray Data's own row checkpoint
(``CheckpointConfig``), keyed by the source item's key: each written block records its
keys, a rerun filters them out as it reads, and a rerun with another block size skips the
same items. A block written but not yet checkpointed when the driver died is written again
on the rerun, as identical points (counted as updated).

The same content twice in one source (one caption under several photos) is one item, as
in the single-process pipeline; where the copies carry different payloads, which copy's
payload the item keeps depends on which block Ray writes last (the single-process pipeline
keeps the last in source order).

On a CPU-only cluster Ray fuses decoding into the encode actors (same resources, one hop
fewer); when encoders take a GPU, decoding stays in CPU tasks beside them.

An embedded Qdrant admits one process: its single writer actor runs on the driver's node and
the driver lets go of the database meanwhile. A Milvus Lite file is refused (pymilvus ties it
to the process that opened it first): serve it with ``milvus-lite server`` and use ``--url``. A
server or cluster (``--url``) gets ``writers`` writer actors anywhere.

Rows carry bytes, not Python objects, between stages (Arrow stores them without pickling):
``pixels`` (decoded RGB, uint8) with its height and width, ``emb_<modality>`` (float32 [d]),
``records`` (the pickled item records of the row).
"""

from __future__ import annotations

import json
import pickle
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from asif_index._optional import require
from asif_index.errors import AsifError, ConfigError
from connectors.distributed import connect
from connectors.distributed.errors import asif_error_of
from connectors.pipeline.ingest import IngestSummary, _fingerprint
from connectors.pipeline.readers import SourceItem

ID_COLUMN = "source_id"


class RayIngestOptions(BaseModel):
    """How a distributed ingest uses the cluster."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="Ray cluster address (None: the running "
                                "one in this process, else a new local Ray)")
    encoders: int = Field(1, ge=1, le=4096, description="encode actors per modality, one "
                          "model each")
    projectors: int = Field(1, ge=1, le=4096, description="project actors, each holding the "
                            "anchor engine")
    writers: int | None = Field(None, ge=1, le=1024, description="writer actors (None: 1 "
                                "for an embedded database, 2 for a server)")
    gpus_per_encoder: float | None = Field(None, ge=0, le=8, description="None: 1 when the "
                                           "cluster has GPUs, else 0")
    batch_size: int = Field(256, ge=1, le=65536, description="rows per encode / project / "
                            "write batch")
    read_tasks: int | None = Field(None, ge=1, description="read tasks (None: Ray decides)")
    checkpoint: Path | None = Field(None, description="resume directory (on storage every "
                                    "node sees); None: <cache_dir>/ray-checkpoints")


# ------------------------------------------------------------------------------- reading
class ItemSource:
    """Source items as a Ray Data source: a list of items (paths and captions, not pixels)
    split over read tasks, or WebDataset shards, one read task per shard. Each task yields
    blocks of ``block_rows`` rows: a block goes to one actor, so blocks the size of a batch
    let every encode actor work."""

    def __new__(cls, *args, **kwargs):  # subclass Datasource only once Ray is imported
        from ray.data import Datasource

        class _Source(Datasource):
            def __init__(self, items: list[SourceItem] | None = None,
                         shards: list[str] | None = None, block_rows: int = 256,
                         fields: dict | None = None, source: str = "") -> None:
                self.fields, self.source = dict(fields or {}), source
                super().__init__()
                self.items, self.shards, self.block_rows = items, shards, block_rows

            def estimate_inmemory_data_size(self) -> int | None:
                return None

            def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                               data_context=None) -> list:
                from ray.data.block import BlockMetadata
                from ray.data.datasource import ReadTask

                def task(fn, rows):
                    return ReadTask(fn, BlockMetadata(num_rows=rows, size_bytes=None,
                                                      exec_stats=None, input_files=None),
                                    per_task_row_limit=per_task_row_limit)

                rows = self.block_rows
                if self.shards is not None:
                    fields, label = self.fields, self.source
                    return [task(lambda s=s: _blocks(_shard_items(s, fields, label), rows), None)
                            for s in self.shards]
                n = max(1, min(parallelism, -(-len(self.items) // rows)))
                bounds = np.linspace(0, len(self.items), n + 1).astype(int)
                return [task(lambda c=self.items[lo:hi]: _blocks(c, rows), int(hi - lo))
                        for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

        return _Source(*args, **kwargs)


def _shard_items(shard: str, fields: dict, source: str) -> list[SourceItem]:
    from connectors.pipeline.metadata import with_fields
    from connectors.pipeline.readers import read_webdataset

    return list(with_fields(read_webdataset([shard]), fields, source))


def _blocks(items: list[SourceItem], rows: int):
    for s in range(0, len(items), rows):
        yield _rows(items[s:s + rows])


def _rows(items: list[SourceItem]):
    import pyarrow as pa

    path = [str(it.image) if isinstance(it.image, (str, Path)) else None for it in items]
    raw = [bytes(it.image) if isinstance(it.image, (bytes, bytearray)) else None for it in items]
    return pa.table({
        ID_COLUMN: pa.array([it.key for it in items], pa.string()),
        "image_path": pa.array(path, pa.string()),
        "image_bytes": pa.array(raw, pa.binary()),
        "text": pa.array([it.text for it in items], pa.string()),
        "payload": pa.array([json.dumps(it.payload) for it in items], pa.string()),
        "error": pa.array([it.error for it in items], pa.string()),
    })


# ------------------------------------------------------------------------------- stages
def _get(batch: dict[str, np.ndarray], column: str, i: int):
    """Row i's value, None when absent: Ray may hand a column of nulls back as NaNs."""
    if column not in batch:
        return None
    v = batch[column][i]
    if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return None
    return v


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """CPU task: read and decode each row's image (the encoder then only resizes); the
    content key comes from the file's bytes, as the single-process pipeline's does."""
    from asif_index.encoders.image import image_content_key, load_image
    from asif_index.errors import ImageDecodeError

    t0 = time.perf_counter()
    n = len(batch[ID_COLUMN])
    pixels, hs, ws, keys, errors = [None] * n, [0] * n, [0] * n, [None] * n, [None] * n
    for i in range(n):
        if _get(batch, "error", i) is not None:
            continue
        path, raw = _get(batch, "image_path", i), _get(batch, "image_bytes", i)
        if path is None and raw is None:
            errors[i] = "no image in this source item"
            continue
        try:
            if raw is None:
                p = Path(path)
                if not p.is_file():
                    raise ImageDecodeError(f"image file '{p}' does not exist", path)
                raw = p.read_bytes()  # once: these bytes are both decoded and hashed
            img = np.asarray(load_image(bytes(raw), path or batch[ID_COLUMN][i]))
        except ImageDecodeError as exc:
            errors[i] = str(exc)
            continue
        keys[i] = image_content_key(bytes(raw))
        pixels[i], hs[i], ws[i] = img.tobytes(), img.shape[0], img.shape[1]
    return {**batch, "pixels": np.array(pixels, dtype=object), "height": np.array(hs),
            "width": np.array(ws), "image_key": np.array(keys, dtype=object),
            "image_error": np.array(errors, dtype=object),
            "t_decode": _first(n, time.perf_counter() - t0)}


class EncodeActor:
    """One model, resident: the rows' images (decoded) or texts -> ``emb_<modality>``."""

    def __init__(self, spec: str, modality: str, expected_name: str, device: str,
                 encoder_batch: int | None, max_image_pixels: int) -> None:
        from asif_index.encoders import image_encoder_from_spec, text_encoder_from_spec
        from asif_index.encoders.image import set_max_image_pixels

        self.modality, self.failed = modality, None
        set_max_image_pixels(max_image_pixels)
        make = image_encoder_from_spec if modality == "image" else text_encoder_from_spec
        try:
            # no embedding cache: a SQLite file is one machine's; each item is encoded once
            self.encoder = make(spec, device=None if device == "auto" else device,
                                batch_size=encoder_batch, cache=None)
            if self.encoder.name != expected_name:
                raise ConfigError(f"the index was built with {modality} encoder "
                                  f"'{expected_name}' but this worker loaded "
                                  f"'{self.encoder.name}' (spec '{spec}'); give the index's "
                                  "encoder (--image-encoder / --text-encoder)")
        except AsifError as exc:
            # raised from the first batch instead: Ray keeps the cause of a failed task (the
            # driver re-raises it), not that of a failed actor constructor
            self.failed = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.failed is not None:
            raise self.failed
        t0 = time.perf_counter()
        m, n = self.modality, len(batch[ID_COLUMN])
        errors = [_get(batch, f"{m}_error", i) for i in range(n)]
        keys = [_get(batch, "image_key", i) for i in range(n)]
        todo, inputs = [], []
        for i in range(n):
            if _get(batch, "error", i) is not None or errors[i] is not None:
                continue
            if m == "image":
                inputs.append(np.frombuffer(batch["pixels"][i], np.uint8).reshape(
                    int(batch["height"][i]), int(batch["width"][i]), 3))
            else:
                text = _get(batch, "text", i)
                if text is None:
                    errors[i] = "no text in this source item"
                    continue
                keys[i] = self.encoder.content_key(text) or batch[ID_COLUMN][i]
                inputs.append(text)
            todo.append(i)
        res = self.encoder.encode_safe(inputs, on_error="skip")
        emb = [None] * n
        for j, row in zip(res.kept, res.embeddings):
            emb[todo[j]] = np.asarray(row, np.float32).tobytes()
        kept = set(res.kept)
        for j, err in zip((j for j in range(len(todo)) if j not in kept), res.errors):
            errors[todo[j]] = str(err)
        out = {k: v for k, v in batch.items() if k not in ("pixels", "height", "width")}
        return {**out, f"emb_{m}": np.array(emb, dtype=object),
                f"{m}_key": np.array(keys, dtype=object),
                f"{m}_error": np.array(errors, dtype=object),
                f"t_encode_{m}": _first(n, time.perf_counter() - t0)}


class ProjectActor:
    """The anchor engine, resident: embeddings -> the rows' item records (pickled), and
    every skipped input with its reason."""

    def __init__(self, anchors_ref: list, modalities: list[str],
                 engine_options: dict[str, Any]) -> None:
        import ray

        self.anchors = ray.get(anchors_ref[0])
        self.modalities, self.engine_options = modalities, engine_options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from connectors.index import project_records

        t0 = time.perf_counter()
        n = len(batch[ID_COLUMN])
        recs: list[list] = [[] for _ in range(n)]
        skipped: list[list] = [[] for _ in range(n)]
        for m in self.modalities:
            rows = []
            for i in range(n):
                key = batch[ID_COLUMN][i]
                if _get(batch, "error", i) is not None:
                    skipped[i].append([key, str(batch["error"][i])])
                elif _get(batch, f"{m}_error", i) is not None:
                    skipped[i].append([key, str(batch[f"{m}_error"][i])])
                else:
                    rows.append(i)
            if not rows:
                continue
            emb = np.stack([np.frombuffer(batch[f"emb_{m}"][i], np.float32) for i in rows])
            kept, errs = project_records(
                self.anchors, emb, m, [batch[f"{m}_key"][i] for i in rows],
                [json.loads(batch["payload"][i]) for i in rows], self.engine_options)
            row_of_item = {}
            for i in rows:
                row_of_item.setdefault(_item(m, batch[f"{m}_key"][i]), i)
            for r in kept:
                recs[row_of_item[r.item]].append(r)
            for e in errs:
                i = row_of_item[_item(m, e.item)]
                skipped[i].append([batch[ID_COLUMN][i], str(e)])
        keep = [k for k in batch if k == ID_COLUMN or k.startswith("t_")]
        return {**{k: batch[k] for k in keep},
                "records": np.array([pickle.dumps(r) for r in recs], dtype=object),
                "skipped": np.array([json.dumps(s) for s in skipped], dtype=object),
                "t_project": _first(n, time.perf_counter() - t0)}


def _item(modality: str, key: str) -> str:
    from connectors.base import item_id

    return item_id(modality, key)


def _first(n: int, value: float) -> np.ndarray:
    """A batch's seconds on its first row (the sink sums the column)."""
    out = np.zeros(n)
    if n:
        out[0] = value
    return out


class WriterActor:
    """The index, held open: writes records projected elsewhere (``Index.write`` fences them
    against anchor updates and re-projects them if the live version moved)."""

    def __init__(self, settings: dict[str, Any], physical_name: str) -> None:
        from asif_index.config import AsifSettings
        from connectors import open_store
        from connectors.index import Index

        s = AsifSettings(**settings)
        self.index = Index.open_writer(open_store(s, physical_name, resolve=False,
                                                  must_exist=True))

    def write(self, records: list) -> tuple[int, int]:
        return self.index.write(records)

    def close(self) -> None:
        from connectors import close_embedded

        self.index.close()
        close_embedded()


def _tally(into: dict | None = None, **part) -> dict[str, Any]:
    """Write counts: a new tally, or ``part`` (the same fields) added into ``into``."""
    if into is None:
        into = {"rows": 0, "new": 0, "updated": 0, "skipped": [], "write_s": 0.0,
                "timings": {}}
    for k, v in part.items():
        if k == "timings":
            for name, secs in v.items():
                into["timings"][name] = into["timings"].get(name, 0.0) + secs
        else:
            into[k] += v
    return into


def _sink(writers: list):
    from ray.data import Datasink

    class IndexSink(Datasink):
        """Each write task hands its blocks' records to one writer actor and returns the
        counts; Ray records the blocks' source keys in the checkpoint once it returned."""

        def __init__(self) -> None:
            self.writers = writers
            self.totals: dict[str, Any] | None = None

        def write(self, blocks, ctx) -> dict[str, Any]:
            import ray

            from ray.data.block import BlockAccessor

            out = _tally()
            writer = self.writers[ctx.task_idx % len(self.writers)]
            for block in blocks:
                cols = BlockAccessor.for_block(block).to_arrow().to_pydict()
                records = [r for b in cols["records"] for r in pickle.loads(b)]
                t0 = time.perf_counter()
                new, upd = ray.get(writer.write.remote(records)) if records else (0, 0)
                _tally(out, rows=len(cols[ID_COLUMN]), new=new, updated=upd,
                       write_s=time.perf_counter() - t0,
                       skipped=[tuple(x) for s in cols["skipped"] for x in json.loads(s)],
                       timings={k: float(sum(v)) for k, v in cols.items()
                                if k.startswith("t_")})
            return out

        def on_write_complete(self, write_result) -> None:
            total = _tally()
            for part in write_result.write_returns:
                _tally(total, **part)
            self.totals = total

    return IndexSink()


# ------------------------------------------------------------------------------- driver
def checkpoint_dir(settings, options: RayIngestOptions, source_name: str, index_key: str,
                   modality: str) -> Path:
    """Where this ingest's resume record lives: one folder per (source, database, index,
    modality), so another ingest never skips this one's items."""
    fp = _fingerprint(source_name, settings.backend, index_key, modality)
    base = options.checkpoint or Path(settings.cache_dir) / "ray-checkpoints"
    return Path(base).resolve() / fp


def checkpointed(path: Path) -> int:
    """Source items the resume record holds (0 when there is none)."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    files = [f for f in files if "pending" not in f.name]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def ingest_on_ray(settings, source: Iterable[SourceItem] | None = None,
                  modality: Literal["image", "text", "both"] = "image",
                  options: RayIngestOptions | None = None, source_name: str = "",
                  webdataset: list[str] | None = None, progress: bool = True,
                  restart: bool = False, item_source: str | None = None,
                  fields: dict | None = None) -> IngestSummary:
    """Embed, project and write items on a Ray cluster; resumable. -> the run's summary.

    settings: an ``AsifSettings`` naming the database and index (every worker opens it from
    these); source: source items (a reader's output: paths and captions); or webdataset:
    shard paths, read one per task on the workers. A rerun after an interruption skips the
    items already written (``restart`` forgets them)."""
    require("ray", "distributed ingestion")
    require("ray.data", "distributed ingestion")
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.checkpoint import CheckpointConfig

    from connectors import forget_store, open_store
    from connectors.index import Index

    opts = options or RayIngestOptions()
    if modality not in ("image", "text", "both"):
        raise ConfigError(f"modality must be image, text or both; got '{modality}'")
    if (source is None) == (webdataset is None):
        raise ConfigError("give source items or WebDataset shards (one of them)")
    if settings.backend == "milvus" and not settings.url:
        # pymilvus runs a Milvus Lite file in a server process tied to the first process that
        # opened it, which the driver cannot hand over to its writer actor
        raise ConfigError("a Milvus Lite file cannot be written from Ray workers: serve it "
                          "with 'milvus-lite server' and pass its address with --url")
    if not settings.url and (opts.writers or 1) != 1:
        raise ConfigError(f"an embedded {settings.backend} database admits one writer; "
                          f"--ray-writers {opts.writers} needs a server (--url)")
    from connectors.pipeline.metadata import field_name, source_name as _source_name
    from connectors.pipeline.metadata import with_fields

    label = _source_name(item_source, source_name or "api")  # every item's ``source``
    for k in fields or {}:
        field_name(k, f"fields['{k}']")
    items = None if source is None else list(with_fields(source, dict(fields or {}), label))
    if items == [] or webdataset == []:
        return IngestSummary()
    ray = connect(opts.address)
    mods = ["image", "text"] if modality == "both" else [modality]
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1 and opts.checkpoint is None:
        # write tasks record the checkpoint where they run: a driver-local default would
        # scatter it over the nodes and a rerun would not see it
        raise ConfigError(f"this Ray cluster has {nodes} nodes: give --checkpoint a directory "
                          "every node mounts (NFS, a shared volume), so a rerun can resume")

    # The driver reads the anchors and which physical index the name means, then lets go of
    # an embedded database: its writer actor must be its only opener.
    store = open_store(settings, must_exist=True)
    physical = getattr(store, "name", settings.collection)
    driver_index = Index.open_writer(store)
    anchors, man = driver_index.anchors, driver_index.anchors.manifest
    driver_index.close()
    settings = settings.for_index(man)  # workers load the index's own encoders, unless named
    embedded = not settings.url
    if embedded:
        forget_store(store)
        from connectors import close_embedded

        close_embedded()
    ck = checkpoint_dir(settings, opts, source_name, settings.collection, modality)
    if restart and ck.exists():
        import shutil

        shutil.rmtree(ck)
    ck.mkdir(parents=True, exist_ok=True)
    resumed = checkpointed(ck)

    gpus = opts.gpus_per_encoder
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    sdict = settings.model_dump(mode="json")
    n_writers = 1 if embedded else (opts.writers or 2)
    here = ray.get_runtime_context().get_node_id()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    placement = {"scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False)} \
        if embedded else {}
    writer_cls = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                            **placement)(WriterActor)
    writers = [writer_cls.remote(sdict, physical) for _ in range(n_writers)]
    anchors_ref = [ray.put(anchors)]

    ctx = DataContext.get_current()
    saved = (ctx.checkpoint_config, ctx.enable_progress_bars)
    ctx.checkpoint_config = CheckpointConfig(ID_COLUMN, str(ck),
                                             delete_checkpoint_on_success=False)
    ctx.enable_progress_bars = progress
    t0 = time.perf_counter()
    sink = _sink(writers)
    try:
        ds = ray.data.read_datasource(
            ItemSource(items=items, shards=[str(s) for s in webdataset or []] or None,
                       block_rows=opts.batch_size, fields=fields, source=label),
            override_num_blocks=opts.read_tasks)
        if "image" in mods:
            ds = ds.map_batches(decode_batch, batch_size=opts.batch_size, batch_format="numpy",
                                num_cpus=1)
        for m in mods:
            spec = settings.image_encoder if m == "image" else settings.text_encoder
            expected = man.image_encoder if m == "image" else man.text_encoder
            ds = ds.map_batches(
                EncodeActor, batch_size=opts.batch_size, batch_format="numpy",
                compute=ActorPoolStrategy(size=opts.encoders), num_gpus=gpus,
                num_cpus=0 if gpus else 1,
                fn_constructor_kwargs=dict(spec=spec, modality=m, expected_name=expected,
                                           device=settings.device,
                                           encoder_batch=settings.batch_size,
                                           max_image_pixels=settings.max_image_pixels))
        ds = ds.map_batches(
            ProjectActor, batch_size=opts.batch_size, batch_format="numpy",
            compute=ActorPoolStrategy(size=opts.projectors), num_cpus=0,
            fn_constructor_kwargs=dict(anchors_ref=anchors_ref, modalities=mods,
                                       engine_options={}))
        with warnings.catch_warnings():
            # Ray warns that a non-file sink is checkpointed after its write (at least once):
            # these writes are idempotent upserts, so a repeat rewrites identical points
            warnings.filterwarnings("ignore", message=".*post-write checkpointing.*")
            ds.write_datasink(sink)
    except Exception as exc:
        raise asif_error_of(exc) from exc
    finally:
        ctx.checkpoint_config, ctx.enable_progress_bars = saved
        for w in writers:
            try:
                ray.get(w.close.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - a dead writer has nothing left to close
                pass
            ray.kill(w)
    tot = sink.totals or _tally()
    s = IngestSummary(ingested=tot["new"], updated=tot["updated"],
                      skipped=sorted(tot["skipped"]), source_items=tot["rows"] + resumed,
                      seconds=time.perf_counter() - t0, resumed_at=resumed)
    tm = tot["timings"]
    # summed over workers (worker-seconds), so shares compare stages, not wall time
    s.timings = {"decode_s": tm.get("t_decode", 0.0),
                 "encode_s": sum(v for k, v in tm.items() if k.startswith("t_encode")),
                 "project_s": tm.get("t_project", 0.0), "write_s": tot["write_s"]}
    return s


__all__ = ["ItemSource", "RayIngestOptions", "checkpoint_dir", "checkpointed", "ingest_on_ray"]
