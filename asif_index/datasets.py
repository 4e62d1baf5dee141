"""Data sets the core reads: captions tables, class folders, Flickr8k, the bundled sample."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from asif_index.errors import ConfigError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def special_file_kind(mode: int) -> str | None:
    """What a stat mode that is not a regular file is ('a folder', 'a FIFO', ...), or None
    for a regular file: readers name what they refuse to open."""
    import stat

    if stat.S_ISREG(mode):
        return None
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")


@dataclass(frozen=True)
class CaptionRow:
    image: Path
    caption: str
    split: str = ""
    extra: tuple = ()  # (column, value) of the table's other columns, in column order
    error: str = ""  # why this row is unusable (bad encoding, malformed line); "" when fine
    url: str = ""  # the image column held an http(s) URL (then ``image`` is no file)


ROW_ERROR = "_asif_row_error"  # key of a row read_table could not decode (the reason)


def read_table(path: str | Path) -> list[dict]:
    """Rows of a CSV, TSV, JSONL or Parquet file as dicts (by extension).

    A row that cannot be decoded (bytes that are not UTF-8, a malformed JSON line) comes back
    as ``{ROW_ERROR: reason}`` in its place, so callers skip and report it; a file that cannot
    be read at all raises :class:`ConfigError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"table '{p}' does not exist")
    suf = p.suffix.lower()
    if suf in (".csv", ".tsv", ".txt"):
        return _read_delimited(p, "\t" if suf in (".tsv", ".txt") else ",")
    if suf in (".jsonl", ".ndjson"):
        rows: list[dict] = []
        for n, line in enumerate(_lines(p), 1):
            if isinstance(line, _Bad):
                rows.append({ROW_ERROR: f"{p}:{n} is not valid UTF-8 ({line.reason})"})
            elif line.strip():
                try:
                    row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
                except json.JSONDecodeError as exc:
                    rows.append({ROW_ERROR: f"{p}:{n} is not valid JSON ({exc})"})
                    continue
                except _DuplicateKey as exc:
                    rows.append({ROW_ERROR: f"{p}:{n} has the key '{exc}' twice; keep one"})
                    continue
                rows.append(row if isinstance(row, dict) else
                            {ROW_ERROR: f"{p}:{n} is not a JSON object"})
        return rows
    if suf == ".parquet":
        from asif_index._optional import require

        pq = require("pyarrow.parquet", "reading Parquet tables")
        try:
            return pq.read_table(str(p)).to_pylist()
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
            raise ConfigError(f"Parquet table '{p}' cannot be read ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); the file is corrupt or not Parquet") from exc
    raise ConfigError(f"unsupported table format '{suf}' for '{p}'; use csv, tsv, jsonl or parquet")


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _Bad(str):
    """A line that was not UTF-8 (its text holds surrogate escapes)."""

    reason = ""


def _lines(p: Path) -> list[str]:
    """Lines of a text file; lines that are not valid UTF-8 come back as :class:`_Bad`."""
    out: list[str] = []
    for raw in p.read_bytes().splitlines():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad = _Bad(raw.decode("utf-8", "replace"))
            bad.reason = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
            out.append(bad)
    if out and out[0].startswith("\ufeff"):  # a UTF-8 byte-order mark
        out[0] = type(out[0])(out[0][1:])
    return out


def _read_delimited(p: Path, delim: str) -> list[dict]:
    import io
    import re

    # Decoded whole (quoted fields may span lines); bytes that are not UTF-8 become
    # surrogate escapes, and the rows holding them are reported instead of the file failing.
    text = p.read_bytes().decode("utf-8", "surrogateescape").lstrip("\ufeff")
    bad = re.compile("[\udc80-\udcff]")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ConfigError(f"the header of table '{p}' is malformed ({exc})") from exc
    if header is None:
        return []
    if any(bad.search(h) for h in header):
        raise ConfigError(f"the header of table '{p}' is not UTF-8 text; save the table as UTF-8")
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise ConfigError(f"table '{p}' has the column '{h}' twice in its header; rename one "
                              "(a row would keep only one of the two values)")
        seen.add(h)
    rows: list[dict] = []
    while True:
        try:
            vals = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            rows.append({ROW_ERROR: f"{p}:{reader.line_num} is malformed ({exc})"})
            continue
        if not any(v.strip() for v in vals):
            continue
        hit = next((v for v in vals if bad.search(v)), None)
        if hit is not None:
            col = bad.search(hit).start()
            byte = ord(hit[col]) - 0xDC00
            rows.append({ROW_ERROR: f"{p}:{reader.line_num} is not valid UTF-8 (byte 0x{byte:02x}); "
                                    "save the table as UTF-8"})
            continue
        rows.append(dict(zip(header, vals + [""] * (len(header) - len(vals)))))


def read_captions(
    table: str | Path,
    images_dir: str | Path | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    split_column: str | None = "split",
) -> list[CaptionRow]:
    """A captions table beside an image folder (image paths relative to ``images_dir``).
    Rows that cannot be used come back with ``error`` set, in their place."""
    rows = read_table(table)
    base = Path(images_dir) if images_dir else Path(table).parent
    if images_dir and not base.is_dir():
        raise ConfigError(f"image folder '{base}' (--images) does not exist")
    good = [r for r in rows if ROW_ERROR not in r]
    if good and (image_column not in good[0] or caption_column not in good[0]):
        raise ConfigError(
            f"table '{table}' has columns {sorted(good[0])}; name the image and caption columns "
            f"(got '{image_column}', '{caption_column}')"
        )
    out = []
    for n, r in enumerate(rows):
        if ROW_ERROR in r:
            out.append(CaptionRow(base / f"row-{n}", "", "", error=r[ROW_ERROR]))
            continue
        img, cap = r.get(image_column), r.get(caption_column)
        if img in (None, "") or cap is None:
            out.append(CaptionRow(base / f"row-{n}", "", "", error=f"{table}: row {n + 1} has no "
                                  f"'{image_column}' or '{caption_column}' value"))
            continue
        if not isinstance(cap, (str, int, float)) or isinstance(cap, bool) or \
                not isinstance(img, str):
            out.append(CaptionRow(base / f"row-{n}", "", "", error=(
                f"{table}: row {n + 1}: the '{caption_column}' and '{image_column}' values must "
                f"be text; got {type(cap).__name__} and {type(img).__name__}")))
            continue
        split = str(r.get(split_column, "") or "") if split_column else ""
        # the table's other columns: the user's metadata (connectors.pipeline.metadata)
        extra = tuple((k, v) for k, v in r.items()
                      if k not in (image_column, caption_column, split_column))
        if img[:8].lower().startswith(("http://", "https://")):
            out.append(CaptionRow(base / f"row-{n}", str(cap), split, extra, url=img))
        else:
            out.append(CaptionRow(base / str(img), str(cap), split, extra))
    return out


def read_class_folder(root: str | Path) -> list[tuple[Path, str]]:
    """(image path, class name) for ``root/<class>/<image>``; sorted for determinism."""
    r = Path(root)
    if not r.is_dir():
        raise ConfigError(f"image folder '{r}' does not exist")
    out = []
    for cls in sorted(d for d in r.iterdir() if d.is_dir()):
        for f in sorted(cls.iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                out.append((f, cls.name))
    return out


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the project (or ``$ASIF_DATA``), when present."""
    import os

    env = os.environ.get("ASIF_DATA")
    cands = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    cands += [here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in cands:
        if (c / "flickr8k" / "captions.tsv").is_file():
            return c
    return None


def flickr8k(root: Path) -> tuple[list[CaptionRow], list[CaptionRow]]:
    """(train rows, dev rows) of Flickr8k as laid out in ``shared/data/flickr8k``."""
    rows = [r for r in read_captions(root / "captions.tsv", root / "images") if not r.error]
    return [r for r in rows if r.split == "train"], [r for r in rows if r.split == "dev"]
