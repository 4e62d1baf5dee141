"""The metadata stage: users' own fields on items.

Readers give each item the fields its source holds (a captions table's extra columns, a
WebDataset sample's ``.json``); this stage adds what the user says for a whole run
(``--payload key=value``, ``--source NAME``) and what a sidecar file says per image file. Every
item ends with a ``source`` field, so ``items delete --filter source=NAME`` removes a run.

Values are typed, so range filters work on them: JSONL and Parquet keep their types
(timestamps become ISO-8601 text); CSV/TSV text and ``--payload`` values become a bool
("true"/"false"), an integer or a decimal only when the text is exactly that number's
canonical spelling (``2010``, ``-3``, ``0.5``; never ``02139``, ``1e3`` or ``+1``), else stay text.
A field name must be a filterable one (:func:`connectors.filters.check_field`) and not one of
the index's own fields; a bad name is an error before anything is read, a value that is not
a scalar makes its row a skipped item with the reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from asif_index.errors import ConfigError, FilterError

# Fields the readers and the index set themselves: user metadata may not shadow them.
BUILTIN_FIELDS = frozenset({"path", "caption", "split", "label", "text", "line", "shard", "key",
                            "source", "modality", "path_escaped", "file", "root"})
SOURCE = "source"
MAX_SOURCE = 256
_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")
_DEC = re.compile(r"^-?(0|[1-9][0-9]{0,14})\.[0-9]{1,15}$")


def field_name(name: Any, where: str) -> str:
    """A user field name, or a one-line error naming ``where`` it came from."""
    from connectors.filters import check_field

    try:
        check_field(name)
    except FilterError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('filter ')}; rename it") from None
    if name in BUILTIN_FIELDS:
        raise ConfigError(f"{where}: '{name}' is one of the index's own fields "
                          f"({', '.join(sorted(BUILTIN_FIELDS))}); rename it")
    return name


def typed_text(text: str) -> str | int | float | bool:
    """A text value as the number or bool it canonically spells, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if _INT.match(text):
        return int(text)
    if _DEC.match(text):
        v = float(text)
        if math.isfinite(v):
            return v
    return text


def typed_value(v: Any, from_text: bool) -> str | int | float | bool | None:
    """A stored scalar for a metadata value (None: the field is absent); raises ValueError
    for a value no payload field can hold."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if abs(v) >= 2**63:
            raise ValueError(f"the integer {v} is outside the 64-bit range")
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            return None  # Parquet/pandas write missing numbers as NaN
        return v
    if isinstance(v, str):
        if v == "":
            return None
        return typed_text(v) if from_text else v
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    raise ValueError(f"holds {type(v).__name__} ({ascii(v)[:60]}); a field is a string, "
                     "number or boolean")


def row_fields(pairs: Iterable[tuple[str, Any]], from_text: bool, where: str
               ) -> dict[str, Any]:
    """Typed fields of one row's (name, value) pairs (names already checked); raises
    ValueError naming the column for a value that cannot be stored."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        try:
            t = typed_value(v, from_text)
        except ValueError as exc:
            raise ValueError(f"{where}: column '{k}' {exc}") from None
        if t is not None:
            out[k] = t
    return out


def parse_payload_args(texts: Iterable[str] | None) -> dict[str, Any]:
    """``--payload key=value`` values (typed as CSV text is)."""
    out: dict[str, Any] = {}
    for t in texts or []:
        k, eq, v = t.partition("=")
        if not eq or not k.strip():
            raise ConfigError(f"--payload '{t}': give key=value, e.g. --payload album=alps")
        k = field_name(k.strip(), f"--payload '{t}'")
        if k in out:
            raise ConfigError(f"--payload: '{k}' is given twice; keep one")
        try:
            out[k] = typed_value(v, from_text=True)
        except ValueError as exc:  # pragma: no cover - text is always storable
            raise ConfigError(f"--payload '{t}': {exc}") from None
        if out[k] is None:
            raise ConfigError(f"--payload '{t}': the value is empty")
    return out


def source_name(source: str | None, default: str) -> str:
    """The ``source`` recorded on a run's items: ``--source``, else the input's name."""
    name = source if source is not None else (Path(default.split(",")[0]).name or default)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("--source: give a non-empty name (e.g. --source crawl-2026-11)")
    if len(name.encode("utf-8")) > MAX_SOURCE or re.search(r"[\x00-\x1f\x7f]", name):
        raise ConfigError(f"--source {ascii(name)[:80]}: at most {MAX_SOURCE} bytes, no control "
                          "characters")
    return name


def with_fields(items: Iterable, fields: dict[str, Any], source: str) -> Iterator:
    """Each item with the run's ``fields`` (its own metadata wins where both name a field) and
    ``source``."""
    for it in items:
        if it.error is None:
            it.payload = {**fields, **it.payload, SOURCE: source}
        yield it


# ----------------------------------------------------------------------------- sidecars
def read_sidecar(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per-file metadata for a folder: a JSON object ``{"file name": {field: value}}``, or a
    CSV/TSV/JSONL/Parquet table with a ``file`` column (the other columns are the fields).
    Keys are paths relative to the folder (``dogs/a.jpg``) or bare file names."""
    from asif_index.datasets import ROW_ERROR, read_table

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"metadata file '{p}' (--metadata) does not exist")
    out: dict[str, dict[str, Any]] = {}
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"metadata file '{p}' is not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
            raise ConfigError(f"metadata file '{p}' must be an object of file name -> "
                              "{field: value}")
        rows = [(str(k), list(v.items()), False) for k, v in doc.items()]
    else:
        table = read_table(p)
        bad = next((r[ROW_ERROR] for r in table if ROW_ERROR in r), None)
        if bad:
            raise ConfigError(f"metadata file: {bad}")
        if table and "file" not in table[0]:
            raise ConfigError(f"metadata table '{p}' has columns {sorted(table[0])}; it needs "
                              "a 'file' column naming each image")
        text = p.suffix.lower() in (".csv", ".tsv", ".txt")
        rows = [(str(r["file"]), [(k, v) for k, v in r.items() if k != "file"], text)
                for r in table]
    for n, (name, pairs, text) in enumerate(rows, 1):
        for k, _ in pairs:
            field_name(k, f"metadata file '{p}', entry '{name}'")
        if name in out:
            raise ConfigError(f"metadata file '{p}' names '{name}' twice; keep one")
        try:
            out[name] = row_fields(pairs, text, f"metadata file '{p}', entry '{name}'")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return out


def with_sidecar(items: Iterable, sidecar: dict[str, dict[str, Any]], root: str | Path
                 ) -> tuple[list, list[str]]:
    """Items with their sidecar fields (by path under ``root``, else by file name), and the
    sidecar keys no item matched (so a typo is reported, not silently ignored)."""
    root = Path(root).resolve()
    used: set[str] = set()
    out = []
    for it in items:
        p = it.payload.get("path")
        if it.error is None and p:
            path = Path(p)
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = path.name
            key = rel if rel in sidecar else (path.name if path.name in sidecar else None)
            if key is not None:
                used.add(key)
                it.payload = {**sidecar[key], **it.payload}
        out.append(it)
    return out, sorted(set(sidecar) - used)


__all__ = ["BUILTIN_FIELDS", "SOURCE", "field_name", "parse_payload_args", "read_sidecar",
           "row_fields", "source_name", "typed_text", "typed_value", "with_fields",
           "with_sidecar"]
