"""Readers: each yields :class:`SourceItem` in a deterministic order (resume relies on it)."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from asif_index.datasets import IMAGE_EXTS, read_captions, read_class_folder, read_table
from asif_index.errors import ConfigError


@dataclass
class SourceItem:
    """One input: ``image`` (path or bytes) and/or ``text``, with a stable ``key``."""

    key: str
    image: Any = None
    text: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


def read_captions_table(table: str | Path, images_dir: str | Path | None = None,
                        image_column: str = "image", caption_column: str = "caption",
                        split: str | None = None) -> Iterator[SourceItem]:
    """Image-caption pairs from a CSV/TSV/JSONL/Parquet table beside an image folder."""
    for r in read_captions(table, images_dir, image_column, caption_column):
        if split is not None and r.split != split:
            continue
        yield SourceItem(key=f"{r.image.name}|{r.caption}", image=r.image, text=r.caption,
                         payload={"path": str(r.image), "caption": r.caption,
                                  **({"split": r.split} if r.split else {})})


def read_image_folder(root: str | Path, class_subfolders: bool = True) -> Iterator[SourceItem]:
    """Images under ``root``; with ``class_subfolders`` the folder name is the ``label``."""
    root = Path(root)
    if class_subfolders and any(d.is_dir() for d in root.iterdir()):
        for path, label in read_class_folder(root):
            yield SourceItem(key=str(path.relative_to(root)), image=path,
                             payload={"path": str(path), "label": label})
        return
    if not root.is_dir():
        raise ConfigError(f"image folder '{root}' does not exist")
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        yield SourceItem(key=path.name, image=path, payload={"path": str(path)})


def read_texts(path: str | Path, column: str = "text") -> Iterator[SourceItem]:
    """Texts: one per line of a .txt file, or a column of a table."""
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise ConfigError(f"text file '{p}' does not exist")
        lines = p.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            yield SourceItem(key=f"{p.name}:{n}", text=line, payload={"text": line, "line": n})
        return
    for n, row in enumerate(read_table(p)):
        if column not in row:
            raise ConfigError(f"table '{p}' has no column '{column}' (columns: {sorted(row)})")
        yield SourceItem(key=f"{p.name}:{n}", text=str(row[column]), payload={"text": str(row[column])})


def read_webdataset(shards: list[str | Path]) -> Iterator[SourceItem]:
    """WebDataset tar shards as img2dataset writes them: ``key.jpg`` + ``key.txt``/``key.json``.

    A sample without an image or caption is yielded anyway (with ``None``) so that the
    pipeline reports it as skipped instead of silently dropping it.
    """
    for shard in shards:
        shard = Path(shard)
        if not shard.is_file():
            raise ConfigError(f"WebDataset shard '{shard}' does not exist")
        samples: dict[str, dict[str, bytes]] = {}
        order: list[str] = []
        with tarfile.open(shard) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                stem, _, ext = m.name.partition(".")
                if stem not in samples:
                    samples[stem] = {}
                    order.append(stem)
                samples[stem][ext.lower()] = tf.extractfile(m).read()
        for stem in order:
            parts = samples[stem]
            img = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
            meta = json.loads(parts["json"]) if "json" in parts else {}
            text = parts["txt"].decode("utf-8") if "txt" in parts else meta.get("caption")
            yield SourceItem(key=f"{shard.name}/{stem}", image=img, text=text,
                             payload={"shard": shard.name, "key": stem,
                                      **{k: v for k, v in meta.items()
                                         if isinstance(v, (str, int, float, bool))}})


def write_webdataset(path: str | Path, samples: list[tuple[str, bytes, str]]) -> Path:
    """Write (key, jpeg bytes, caption) samples as a WebDataset shard (tests, examples)."""
    p = Path(path)
    with tarfile.open(p, "w") as tf:
        for key, img, cap in samples:
            for ext, data in (("jpg", img), ("txt", cap.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return p
