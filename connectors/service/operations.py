"""What each job does, on the service's current :class:`Index` (never on a store)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from asif_index.errors import InputError
from connectors.service.images import inside, resolve_under
from connectors.service.jobs import Job, JobManager


UPLOAD_HANDLE = re.compile(r"^u-[0-9a-f]{32}$")


def upload_file(ref: str, uploads: Path) -> Path | None:
    """The stored table an upload handle names (None: ``ref`` is no handle; a handle of no
    upload is an InputError)."""
    if not UPLOAD_HANDLE.match(ref):
        return None
    found = sorted(uploads.glob(f"{ref}-*"))
    if not found:
        raise InputError(f"no upload '{ref}': POST the table to /uploads again", ref)
    return found[0]


def input_name(ref: str, uploads: Path) -> str:
    """A job input as items record it (``source``): an upload's own file name, else ``ref``."""
    f = upload_file(ref, uploads) if ref else None
    return f.name[len(ref) + 1:] if f is not None else ref


def _table(ref: str, roots: list[Path], uploads: Path) -> Path:
    return upload_file(ref, uploads) or resolve_under(ref, [*roots, uploads.resolve()])


def source_items(params: dict[str, Any], roots: list[Path], uploads: Path,
                 metadata: bool = True) -> list:
    """The SourceItems a job reads: a captions table (uploaded, or a path under the roots)
    with its image folder, an image folder, or a texts file. Image rows pointing outside the
    roots are kept as skipped items with that reason, never read."""
    from connectors.pipeline import read_captions_table, read_image_folder, read_texts

    if params.get("upload_batch"):  # images sent to POST /jobs/ingest/images, kept under uploads
        from connectors.service.image_uploads import batch_items

        return batch_items(params["upload_batch"], uploads / "batches")
    if params.get("captions"):
        table = _table(params["captions"], roots, uploads)
        images = resolve_under(params["images"], roots, "dir") if params.get("images") else None
        items = list(read_captions_table(table, images,
                                         columns=params.get("columns") if metadata else []))
    elif params.get("folder"):
        items = list(read_image_folder(resolve_under(params["folder"], roots, "dir")))
    else:
        items = list(read_texts(_table(params["texts"], roots, uploads)))
    out = []
    for it in items:
        if it.image is not None and not it.error and not inside(Path(it.image), roots):
            it = dataclasses.replace(it, image=None, error=f"image '{it.image}' is outside the "
                                     "image roots this service may read")
        out.append(it)
    return out


def make_runner(holder: dict, roots: list[Path], manager_ref: list[JobManager],
                rebuild: Callable | None, fetch=None
                ) -> Callable[[Job, Callable[..., None]], dict]:
    """``holder["index"]`` is the service's current index (a rebuild replaces it); fetch:
    the FetchLimits of image URL downloads (None: the service downloads none)."""
    from connectors.pipeline import ingest_anchors, ingest_items
    from connectors.pipeline.fetch import FetchingSource, needs_fetch

    def run(job: Job, report: Callable[..., None]) -> dict:
        idx = holder["index"]
        p = job.params
        manager = manager_ref[0]
        if job.kind in ("ingest", "anchors_add"):
            items = source_items(p, roots, manager.dir / "uploads", job.kind == "ingest")
            if fetch is not None and needs_fetch(items):  # kept beside uploaded images
                items = FetchingSource(items, manager.dir / "uploads" / "images", fetch)
            report(total=len(items))
            name = (input_name(p.get("captions") or p.get("texts") or "",
                               manager.dir / "uploads") or p.get("folder")
                     or ("upload" if p.get("upload_batch") else ""))

            def on_batch(summary) -> None:
                report(done=summary.source_items, skipped=summary.skipped)

            if job.kind == "ingest":
                s = ingest_items(idx, items, p.get("modality", "image"),
                                 checkpoint=manager.checkpoint(job), source_name=name,
                                 progress=False, on_batch=on_batch,
                                 item_source=p.get("source"), fields=p.get("payload"))
            else:
                s = ingest_anchors(idx, items, batch_size=int(p.get("batch", 4096)),
                                   checkpoint=manager.checkpoint(job), source_name=name,
                                   progress=False, on_batch=on_batch)
            report(done=s.source_items, skipped=s.skipped)
            return {"new": s.ingested, "updated": s.updated, "skipped": len(s.skipped),
                    "source_items": s.source_items, "seconds": round(s.seconds, 3),
                    "anchors": len(idx.anchors), "anchor_version": idx.version}
        if job.kind == "anchors_remove":
            import numpy as np

            from connectors.updates import status, update_anchors

            if status(idx.store).get("pending_update"):
                update_anchors(idx)  # a removal interrupted with the server: finish it first
            known = set(idx.anchors.ids.tolist())
            ids = [int(i) for i in p["ids"] if int(i) in known]
            report(total=idx.store.count_items(version=idx.version))
            if not ids:  # every id already removed (by an earlier run of this job)
                return {"removed": 0, "anchors": len(idx.anchors), "anchor_version": idx.version}
            r = idx.remove_anchors(np.asarray(ids), progress=lambda n: report(done=n))
            return {"removed": len(ids), "items_touched": r.items_touched,
                    "items_scanned": r.items_scanned, "seconds": round(r.seconds, 3),
                    "anchors": len(idx.anchors), "anchor_version": idx.version}
        if job.kind == "anchors_rebuild":
            new, n = rebuild(idx, p.get("k"), p.get("p"))
            new.prepare()  # before searches reach it
            holder["index"] = new
            return {"items": n, "k": new.k, "p": new.p, "anchor_version": new.version}
        raise ValueError(f"unknown job kind '{job.kind}'")

    return run
