"""Images sent to the service to index (``POST /jobs/ingest/images``).

A batch is checked whole before anything is kept: every file within the size limit and
decodable as an image, the metadata JSON an object of uploaded file name -> {field: value}
with filterable names and scalar values. Then each image is stored once under the service's
data root by the SHA-256 of its bytes (the same photo sent twice is one file and, by its
content, one item), and the batch is written as a small JSON manifest the ingest job reads;
the job is then an ordinary one (progress, skips, resume after a restart). Clients get an
opaque batch handle, never a server path.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from asif_index.errors import ConfigError, InputError
from connectors.pipeline.image_store import image_format, store_image

MAX_FILES = 1000
HANDLE = re.compile(r"^b-[0-9a-f]{32}$")
def _json_object(text: str | None, what: str, shape: str) -> dict:
    """A form field's JSON object ({} when absent), or a one-line error naming it."""
    if text is None or not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} must be a JSON object of {shape}")
    return doc


def parse_metadata(text: str | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """The batch's per-file metadata: {uploaded file name: typed fields}."""
    from connectors.pipeline.metadata import field_name, row_fields

    doc = _json_object(text, "metadata", "file name -> {field: value}")
    if not all(isinstance(v, dict) for v in doc.values()):
        raise ConfigError("metadata must be a JSON object of file name -> {field: value}")
    unknown = sorted(set(doc) - set(names))
    if unknown:
        raise ConfigError(f"metadata names '{unknown[0]}', which is not one of the uploaded "
                          "files")
    out = {}
    for name, fields in doc.items():
        for k in fields:
            field_name(k, f"metadata for '{name}'")
        try:
            out[name] = row_fields(fields.items(), False, f"metadata for '{name}'")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return out


def parse_payload(text: str | None) -> dict[str, Any]:
    """The batch's fields for every item: a JSON object of field: scalar."""
    from connectors.pipeline.metadata import field_name, row_fields

    doc = _json_object(text, "payload", "field: value")
    for k in doc:
        field_name(k, f"payload['{k}']")
    try:
        return row_fields(doc.items(), False, "payload")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def store_batch(files: list[tuple[str, bytes]], metadata: dict[str, dict[str, Any]],
                images_dir: Path, batches_dir: Path) -> str:
    """Keep a checked batch: images by content hash, then the manifest. -> its handle."""
    if not files:
        raise ConfigError("send at least one image file")
    if len(files) > MAX_FILES:
        raise ConfigError(f"a batch holds at most {MAX_FILES} images; got {len(files)}")
    names = [n for n, _ in files]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"two uploads are named '{dup}'; give each file its own name")
    exts = [image_format(n, d) for n, d in files]  # every file checked before any is kept
    rows = []
    for (name, data), ext in zip(files, exts):
        path = store_image(data, ext, images_dir)
        rows.append({"file": name, "path": str(path), "fields": metadata.get(name, {})})
    handle = f"b-{uuid.uuid4().hex}"
    batches_dir.mkdir(parents=True, exist_ok=True)
    tmp = batches_dir / f".{handle}.json"
    tmp.write_text(json.dumps(rows), encoding="utf-8")
    os.replace(tmp, batches_dir / f"{handle}.json")
    return handle


def batch_items(handle: str, batches_dir: Path) -> list:
    """The SourceItems of a stored batch."""
    from connectors.pipeline.readers import SourceItem

    if not HANDLE.match(str(handle)):
        raise ConfigError(f"'{str(handle)[:80]}' is not an upload batch handle")
    p = batches_dir / f"{handle}.json"
    if not p.is_file():
        raise InputError(f"no upload batch '{handle}'", handle)
    rows = json.loads(p.read_text(encoding="utf-8"))
    return [SourceItem(key=r["file"], image=Path(r["path"]),
                       payload={**r["fields"], "path": r["path"], "file": r["file"]})
            for r in rows]


__all__ = ["MAX_FILES", "batch_items", "image_format", "parse_metadata", "parse_payload",
           "store_batch"]
