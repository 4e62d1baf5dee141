"""Stages (embed -> project -> write) and the drivers that run them with a checkpoint.

Resume is exact because every stage is deterministic: readers yield in a fixed order, ids
are content hashes, and writes are upserts. The checkpoint records how many source items
are fully written; a killed run restarts after them, and replaying a half-written batch
only rewrites identical points.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Literal, NamedTuple

import numpy as np

from asif_index.anchors import AnchorPayload
from asif_index.encoders.base import Encoder
from asif_index.errors import ConfigError
from connectors.base import ItemRecord, anchor_payload_problem
from connectors.index import Index
from connectors.pipeline.readers import SourceItem

PREFERRED_BATCH = {"qdrant": 128, "milvus": 512, "memory": 512}  # Qdrant advises 64-256


@dataclass
class IngestSummary:
    ingested: int = 0
    updated: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    source_items: int = 0
    seconds: float = 0.0
    resumed_at: int = 0  # source items a checkpoint said were done when this run started
    timings: dict[str, float] = field(default_factory=lambda: {
        "decode_s": 0.0, "encode_s": 0.0, "project_s": 0.0, "write_s": 0.0})

    @property
    def items_per_s(self) -> float:
        return (self.ingested + self.updated) / self.seconds if self.seconds else 0.0

    def report(self) -> str:
        lines = []
        if self.resumed_at:
            lines.append(f"resumed from the checkpoint: the first {self.resumed_at} source items "
                         "were done by an earlier run (counted below; --restart starts over)")
        lines += [f"ingested {self.ingested} new, updated {self.updated}, skipped "
                  f"{len(self.skipped)} of {self.source_items} source items in "
                  f"{self.seconds:.1f}s ({self.items_per_s:.1f} items/s)"]
        total = sum(self.timings.values()) or 1.0
        lines.append("time: " + ", ".join(
            f"{k[:-2]} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in self.timings.items()))
        for key, reason in self.skipped[:20]:
            lines.append(f"  skipped {key}: {reason}")
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


class Checkpoint:
    """A JSON file: the source fingerprint, items done, and the summary so far."""

    def __init__(self, path: str | Path | None, fingerprint: str) -> None:
        self.path = Path(path) if path else None
        self.fingerprint = fingerprint
        self.done = 0
        self.summary = IngestSummary()
        if self.path is None:
            return
        if self.path.exists() and not self.path.is_file():
            raise ConfigError(f"checkpoint '{self.path}' (--checkpoint) is a folder or a "
                              "special file; name a file, e.g. "
                              f"'{self.path / 'ingest.json'}'")
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                int(doc["done"]), doc["summary"]["skipped"], doc["fingerprint"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"'{self.path}' (--checkpoint) is not an asif-index checkpoint ({exc}); "
                    "name another file (this one is left untouched), or delete it") from None
            if doc["fingerprint"] != fingerprint:
                raise ConfigError(
                    f"checkpoint '{self.path}' belongs to another ingest (other source, index or "
                    "modality): pass another --checkpoint path, or --restart to start this one "
                    "over (the command line deletes it then)"
                )
            self.done = int(doc["done"])
            s = doc["summary"]
            s["skipped"] = [tuple(x) for x in s["skipped"]]
            self.summary = IngestSummary(**s)

    def save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "done": self.done,
                                       "summary": asdict(self.summary)}))
            tmp.replace(self.path)  # atomic: a kill leaves the old or the new checkpoint
        except OSError:
            tmp.unlink(missing_ok=True)
            raise


def resume_at(source: Iterable, done: int) -> Iterator:
    """The source from item ``done`` on. A source that can start there itself (``after``:
    a fetching source, which then downloads nothing for the items before) is asked to."""
    if done and hasattr(source, "after"):
        return iter(source.after(done))
    return islice(source, done, None)


def opened(source: Iterable) -> Iterator:
    """The source with its first item already read: a reader's up-front errors (a missing or
    unreadable file) surface here, before any progress bar or write."""
    import itertools

    it = iter(source)
    try:
        first = next(it)
    except StopIteration:
        return iter(())
    return itertools.chain([first], it)


def batched(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


# ------------------------------------------------------------------------------ stages
class Embedded(NamedTuple):
    """What the embed stage hands on: embeddings float32 [n_ok, d], the items they belong to,
    the skipped ones as (key, reason), and the embeddings as a GPU tensor (None on the CPU)."""

    embeddings: np.ndarray
    items: list[SourceItem]
    skipped: list[tuple[str, str]]
    device: Any = None


def embed_stage(encoder: Encoder, items: list[SourceItem], modality: str,
                progress: Callable[[int, int], None] | None = None) -> Embedded:
    """Items a reader flagged (``error``) are skipped with the reader's reason.
    progress: passed to :meth:`Encoder.encode_safe` (items done, items)."""
    skipped = [(it.key, it.error) for it in items if it.error]
    items = [it for it in items if not it.error]
    inputs = [it.image if modality == "image" else it.text for it in items]
    skipped += [(it.key, unfetched(it) if it.url and modality == "image" else
                 f"no {modality} in this source item") for it, x in zip(items, inputs)
                if x is None]
    present = [i for i, x in enumerate(inputs) if x is not None]
    res = encoder.encode_safe([inputs[i] for i in present], on_error="skip", progress=progress)
    skipped += [(items[present[i]].key, str(e)) for i, e in zip(_bad_positions(res, len(present)), res.errors)]
    return Embedded(res.embeddings, [items[present[i]] for i in res.kept], skipped,
                    res.device_embeddings)


def unfetched(it: SourceItem) -> str:
    return (f"image URL '{it.url[:200]}' was not downloaded: give --fetch-dir DIR (CLI) or "
            "pass the items through connectors.pipeline.fetch_items")


def _bad_positions(res, n: int) -> list[int]:
    kept = set(res.kept)
    return [i for i in range(n) if i not in kept]


def item_key(encoder: Encoder, it: SourceItem, modality: str) -> str:
    """Content key of an item, as its encoder hashes it (image bytes, text), so that the same
    content gets the same id whatever reader it came from."""
    x = it.image if modality == "image" else it.text
    try:
        return encoder.content_key(x) or it.key
    except OSError:
        return it.key


def project_stage(index: Index, emb: np.ndarray, items: list[SourceItem], modality: str,
                  device_emb=None) -> tuple[list[ItemRecord], list[tuple[str, str]]]:
    """-> (records, skipped (key, reason)); ``device_emb``: ``emb`` on the GPU, projected there."""
    enc = index.encoders[modality]
    recs, errs = index.records(emb, modality, [item_key(enc, it, modality) for it in items],
                               [it.payload for it in items], device_emb)
    return recs, [(e.item or "?", str(e)) for e in errs]


def write_stage(index: Index, records: list[ItemRecord]) -> tuple[int, int]:
    """Upsert records; -> (new, updated) distinct items. Retries live in the store.

    Records of the same item (the same content twice in a batch) collapse to the last one,
    as the database's upsert would; an item already stored is updated in its point."""
    if not records:
        return 0, 0
    return index.write(records)


# ----------------------------------------------------------------------------- drivers
def _fingerprint(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def ingest_items(index: Index, source: Iterable[SourceItem],
                 modality: Literal["image", "text", "both"] = "image",
                 batch_size: int | None = None, checkpoint: str | Path | None = None,
                 source_name: str = "", progress: bool = True,
                 on_batch: Callable[[IngestSummary], None] | None = None,
                 index_key: str | None = None, item_source: str | None = None,
                 fields: dict[str, Any] | None = None) -> IngestSummary:
    """Embed, project and write items; resumable through ``checkpoint``.

    Every item's payload gets ``source`` (``item_source``, else the file name of
    ``source_name``) and the run's ``fields`` (``--payload``; an item's own metadata wins):
    :mod:`connectors.pipeline.metadata`.

    The database write of a batch runs in a writer thread while the next batch is decoded,
    encoded and projected (one write in flight, so batches land in order); a batch counts
    as done, and enters the checkpoint, only once its write returned. A failed write raises
    here after the earlier batches were checkpointed, so a re-run resumes at that batch."""
    mods = ["image", "text"] if modality == "both" else [modality]
    bs = batch_size or PREFERRED_BATCH.get(index.store.backend, 256)
    # index_key: the name the user gave (an alias survives a rebuild; the physical name not)
    ck = Checkpoint(checkpoint, _fingerprint(source_name, index.store.backend,
                                             index_key or getattr(index.store, "name", ""),
                                             modality))
    s = ck.summary
    s.resumed_at = ck.done
    total = len(source) if hasattr(source, "__len__") else None
    from connectors.pipeline.metadata import source_name as _source_name
    from connectors.pipeline.metadata import with_fields

    from connectors.pipeline.metadata import field_name

    label = _source_name(item_source, source_name or "api")
    for k in fields or {}:
        field_name(k, f"fields['{k}']")
    it = with_fields(opened(resume_at(source, ck.done)), dict(fields or {}), label)
    bar = _bar(progress, ck.done, total)
    t_start = time.perf_counter() - s.seconds
    pending: tuple[Future, list, list] | None = None

    def write_all(records: list[list[ItemRecord]]) -> tuple[int, int, float]:
        t0 = time.perf_counter()
        new = upd = 0
        for recs in records:
            n, u = write_stage(index, recs)
            new, upd = new + n, upd + u
        return new, upd, time.perf_counter() - t0

    def finish(job: tuple[Future, list, list]) -> None:
        fut, batch, skipped = job
        new, upd, secs = fut.result()
        s.timings["write_s"] += secs
        s.ingested += new
        s.updated += upd
        s.skipped += skipped
        _batch_done(ck, batch, t_start, bar, on_batch)

    with ThreadPoolExecutor(1, thread_name_prefix="asif-writer") as writer:
        try:
            for batch in batched(it, bs):
                records, skipped = [], []
                for mod in mods:
                    enc = index.encoders[mod]
                    before = dict(getattr(enc, "timings", {}))
                    emb = embed_stage(enc, batch, mod)
                    for k in ("decode_s", "encode_s"):
                        s.timings[k] += getattr(enc, "timings", {}).get(k, 0.0) - before.get(k, 0.0)
                    t0 = time.perf_counter()
                    recs, bad = project_stage(index, emb.embeddings, emb.items, mod, emb.device)
                    s.timings["project_s"] += time.perf_counter() - t0
                    records.append(recs)
                    skipped += emb.skipped + bad
                if pending is not None:
                    job, pending = pending, None
                    finish(job)
                pending = (writer.submit(write_all, records), batch, skipped)
            if pending is not None:
                job, pending = pending, None
                finish(job)
        finally:
            if pending is not None:  # an error upstream: let the write in flight land first
                try:
                    finish(pending)
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
    if bar is not None:
        bar.close()
    s.seconds = time.perf_counter() - t_start
    ck.save()
    return s


def ingest_anchors(index: Index, source: Iterable[SourceItem], batch_size: int = 4096,
                   checkpoint: str | Path | None = None, source_name: str = "",
                   progress: bool = True,
                   on_batch: Callable[[IngestSummary], None] | None = None,
                   index_key: str | None = None, item_pass=None) -> IngestSummary:
    """Add image-caption pairs as anchors. A pair already in the set (same image bytes and
    caption) is skipped as a duplicate, so re-runs and resumes never duplicate anchors.
    item_pass: where each update's pass over the stored items runs (``update_anchors``)."""
    ck = Checkpoint(checkpoint, _fingerprint(source_name, "anchors", index.store.backend,
                                             index_key or getattr(index.store, "name", "")))
    s = ck.summary
    s.resumed_at = ck.done
    known = {p.key for p in index.anchors.payloads if p.key}
    total = len(source) if hasattr(source, "__len__") else None
    source = opened(source)
    bar = _bar(progress, ck.done, total)
    t_start = time.perf_counter() - s.seconds
    for batch in batched(resume_at(source, ck.done), batch_size):
        fresh, keys = [], []
        for it in batch:
            if it.error or (it.url and it.image is None):
                s.skipped.append((it.key, it.error or unfetched(it)))
                continue
            problem = anchor_payload_problem(_anchor_payload(it, source_name, ""))
            if problem:
                s.skipped.append((it.key, problem))
                continue
            key = _pair_key(index.encoders["image"], it)
            if key in known:
                s.updated += 1
                continue
            known.add(key)
            fresh.append(it)
            keys.append(key)
        encs = (index.encoders["image"], index.encoders["text"])
        before = [dict(getattr(e, "timings", {})) for e in encs]
        emb_i, kept_i, skip_i, _ = embed_stage(encs[0], fresh, "image",
                                               _share(bar, ck.done, len(batch), 0.0, 0.85))
        emb_t, kept_t, skip_t, _ = embed_stage(encs[1], kept_i, "text",
                                               _share(bar, ck.done, len(batch), 0.85, 0.95))
        for e, b in zip(encs, before):
            for k in ("decode_s", "encode_s"):
                s.timings[k] += getattr(e, "timings", {}).get(k, 0.0) - b.get(k, 0.0)
        pos = {id(x): n for n, x in enumerate(kept_i)}
        rows = [pos[id(x)] for x in kept_t]
        key_of = {id(x): k for x, k in zip(fresh, keys)}
        payloads = [_anchor_payload(x, source_name, key_of[id(x)]) for x in kept_t]
        t0 = time.perf_counter()
        if payloads:
            index.add_anchor_embeddings(emb_i[rows], emb_t, payloads, item_pass=item_pass)
        s.timings["write_s"] += time.perf_counter() - t0
        s.ingested += len(payloads)
        s.skipped += skip_i + skip_t
        _batch_done(ck, batch, t_start, bar, on_batch)
    if bar is not None:
        bar.close()
    return s


def _anchor_payload(it: SourceItem, source_name: str, key: str) -> AnchorPayload:
    return AnchorPayload(it.text or "", str(it.payload.get("path", it.key)), source_name.encode()[-256:].decode("utf-8", "ignore"),
                         key)


def _batch_done(ck: Checkpoint, batch: list, t_start: float, bar, on_batch=None) -> None:
    """A batch is fully written: count it, checkpoint it, show it (and tell ``on_batch``, which
    may raise to stop the run: the checkpoint already holds this batch)."""
    s = ck.summary
    s.source_items += len(batch)
    s.seconds = time.perf_counter() - t_start
    ck.done += len(batch)
    ck.save()
    if bar is not None:
        bar.update(ck.done - bar.n)  # the bar may have moved inside the batch (_share)
        bar.set_postfix(items_s=f"{s.items_per_s:.1f}", skipped=len(s.skipped))
    if on_batch is not None:
        on_batch(s)


def _share(bar, base: int, n: int, lo: float, hi: float) -> Callable[[int, int], None] | None:
    """Move the bar inside a batch of ``n`` source items while one stage runs, over the share
    [lo, hi) of the batch that stage stands for (encoding images is most of an anchor
    chunk's time); the batch's end sets it exactly."""
    if bar is None:
        return None

    def cb(done: int, total: int) -> None:
        target = base + int(n * (lo + (hi - lo) * done / max(total, 1)))
        if target > bar.n:
            bar.update(target - bar.n)
    return cb


def _pair_key(encoder: Encoder, it: SourceItem) -> str:
    try:
        img = (encoder.content_key(it.image) or "") if it.image is not None else ""
    except OSError:  # missing file: the embed stage reports it
        img = f"missing:{it.key}"
    return hashlib.sha1(f"{img}|{it.text}".encode()).hexdigest()


def _bar(progress: bool, initial: int, total: int | None = None):
    if not progress:
        return None
    from tqdm import tqdm

    # with a total, tqdm shows the percentage and the ETA
    return tqdm(initial=initial, total=total, unit="item", desc="ingest", dynamic_ncols=True)
