"""Data sets the core reads: captions tables, class folders, Flickr8k, the bundled sample."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from asif_index.errors import ConfigError, InputError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class CaptionRow:
    image: Path
    caption: str
    split: str = ""
    extra: tuple = ()


def read_table(path: str | Path) -> list[dict]:
    """Rows of a CSV, TSV, JSONL or Parquet file as dicts (by extension)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"table '{p}' does not exist")
    suf = p.suffix.lower()
    if suf in (".csv", ".tsv", ".txt"):
        with p.open(newline="", encoding="utf-8") as fh:
            delim = "\t" if suf in (".tsv", ".txt") else ","
            return list(csv.DictReader(fh, delimiter=delim))
    if suf in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{p}:{n} is not valid JSON ({exc})", f"{p}:{n}") from exc
        return rows
    if suf == ".parquet":
        from asif_index._optional import require

        pq = require("pyarrow.parquet", "reading Parquet tables")
        return pq.read_table(str(p)).to_pylist()
    raise ConfigError(f"unsupported table format '{suf}' for '{p}'; use csv, tsv, jsonl or parquet")


def read_captions(
    table: str | Path,
    images_dir: str | Path | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    split_column: str | None = "split",
) -> list[CaptionRow]:
    """A captions table beside an image folder (image paths relative to ``images_dir``)."""
    rows = read_table(table)
    base = Path(images_dir) if images_dir else Path(table).parent
    if rows and (image_column not in rows[0] or caption_column not in rows[0]):
        raise ConfigError(
            f"table '{table}' has columns {sorted(rows[0])}; name the image and caption columns "
            f"(got '{image_column}', '{caption_column}')"
        )
    out = []
    for r in rows:
        split = str(r.get(split_column, "")) if split_column else ""
        out.append(CaptionRow(base / str(r[image_column]), str(r[caption_column]), split))
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
    rows = read_captions(root / "captions.tsv", root / "images")
    return [r for r in rows if r.split == "train"], [r for r in rows if r.split == "dev"]
