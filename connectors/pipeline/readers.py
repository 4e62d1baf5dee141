"""Readers: each yields :class:`SourceItem` in a deterministic order (resume relies on it)."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from asif_index.datasets import (
    IMAGE_EXTS,
    ROW_ERROR,
    _Bad,
    _lines,
    read_captions,
    read_table,
    special_file_kind,
)
from asif_index.errors import ConfigError, printable


@dataclass
class SourceItem:
    """One input: ``image`` (path or bytes) and/or ``text``, with a stable ``key``."""

    key: str
    image: Any = None
    text: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the reader could not use this input: skip it, report why
    url: str | None = None  # an image to download first (connectors.pipeline.fetch)


def read_captions_table(table: str | Path, images_dir: str | Path | None = None,
                        image_column: str = "image", caption_column: str = "caption",
                        split: str | None = None, columns: Sequence[str] | None = None
                        ) -> Iterator[SourceItem]:
    """Image-caption pairs from a CSV/TSV/JSONL/Parquet table beside an image folder.
    Image references are stored absolute, so they resolve wherever the index is read.

    The table's other columns are the items' metadata (typed, see
    :mod:`connectors.pipeline.metadata`): all of them, or only ``columns`` (``[]``: none).
    A column that cannot be a field name is an error before any row is used; a row whose
    value cannot be stored is a skipped item with the reason."""
    from connectors.pipeline.metadata import field_name, row_fields

    rows = read_captions(table, images_dir, image_column, caption_column)
    # every column any row has (JSONL rows need not share keys), in first-seen order
    names = tuple(dict.fromkeys(k for r in rows if not r.error for k, _ in r.extra))
    keep = list(names) if columns is None else list(columns)
    missing = [c for c in keep if c not in names]
    if missing and any(not r.error for r in rows):
        raise ConfigError(f"table '{table}' has no column '{missing[0]}' (--columns); its "
                          f"metadata columns are {list(names)}")
    for c in keep:
        field_name(c, f"table '{table}', column '{c}' (or choose columns with --columns)")
    keep_set = set(keep)
    text = Path(table).suffix.lower() in (".csv", ".tsv", ".txt")
    for n, r in enumerate(rows):
        if r.error:
            yield SourceItem(key=f"{Path(table).name}:row{n + 1}", error=r.error)
            continue
        if split is not None and r.split != split:
            continue
        key = f"{r.url}|{r.caption}" if r.url else f"{r.image.name}|{r.caption}"
        try:
            meta = row_fields([(k, v) for k, v in r.extra if k in keep_set], text,
                              f"{table}: row {n + 1}")
        except ValueError as exc:
            yield SourceItem(key=key, error=str(exc))
            continue
        if r.url:  # downloaded by the fetch stage (connectors.pipeline.fetch) before embedding
            yield SourceItem(key=key, text=r.caption, url=r.url,
                             payload={**meta, "url": r.url, "caption": r.caption,
                                      **({"split": r.split} if r.split else {})})
            continue
        path = r.image.resolve()
        yield SourceItem(key=key, image=path, text=r.caption,
                         payload={**meta, "path": str(path), "caption": r.caption,
                                  **({"split": r.split} if r.split else {})})


def read_image_folder(root: str | Path, class_subfolders: bool = True,
                      follow_symlinks: bool = False) -> Iterator[SourceItem]:
    """Images in ``root``, and with ``class_subfolders`` in each sub-folder (its name is the
    item's ``label``; the folder's own images have none). Nothing here can block or escape:

    - only regular files are opened: FIFOs, sockets and devices (even named ``x.jpg``) are
      skipped and reported before anything reads them;
    - a symlink whose target lies outside ``root`` is skipped (reported) unless
      ``follow_symlinks``; a broken one is reported;
    - hidden folders (``.thumbnails``) and folders below the first level are not read, and
      say so; a folder named like an image (``sub.jpg``) is a folder;
    - names that are not valid UTF-8 are read through their bytes and stored with backslash
      escapes, so one such name never fails the batch beside it.
    Order is deterministic (resume relies on it)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"image folder '{root}' does not exist (--folder); check the path")
    top = root.resolve()
    subdirs = []
    for entry in _listing(root):
        kind, why = _kind(entry, top, follow_symlinks)
        if kind == "dir":
            if entry.name.startswith("."):
                yield _skip(root, entry, "a hidden folder; not read")
            elif class_subfolders:
                subdirs.append(entry)
            else:
                yield _skip(root, entry, "a sub-folder; not read (give it as its own --folder "
                            "to ingest it)")
        elif kind == "image":
            yield _image_item(root, entry, None)
        elif kind == "skip":
            yield _skip(root, entry, why)
    for d in subdirs:
        for entry in _listing(d):
            kind, why = _kind(entry, top, follow_symlinks)
            if kind == "image":
                yield _image_item(root, entry, printable(d.name))
            elif kind == "dir":
                yield _skip(root, entry, "a folder two levels down; not read (one level of "
                            "class folders is read)")
            elif kind == "skip":
                yield _skip(root, entry, why)


def _listing(folder: Path) -> list[Path]:
    # byte order of the names: deterministic whatever their encoding
    return sorted(folder.iterdir(), key=lambda p: os.fsencode(p.name))


def _kind(p: Path, top: Path, follow_symlinks: bool) -> tuple[str, str]:
    """('image' | 'dir' | 'skip' | 'other', reason) from lstat/stat, never opening ``p``."""
    try:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            try:
                target = p.resolve(strict=True)
            except (OSError, RuntimeError):
                return ("skip", "a broken symlink") if _looks_like_image(p) else ("other", "")
            if not follow_symlinks and not target.is_relative_to(top):
                return (("skip", f"a symlink to '{printable(str(target))}', outside the "
                         "folder; not followed (--follow-symlinks follows it)")
                        if _looks_like_image(p) or target.is_dir() else ("other", ""))
            st = target.stat()
    except OSError as exc:
        return "skip", f"cannot be examined ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "dir", ""
    if not _looks_like_image(p):
        return "other", ""  # sidecars, notes: not images, not reported
    kind = special_file_kind(st.st_mode)
    if kind is not None:
        return "skip", f"{kind}, not an image file; not opened"
    return "image", ""


def _looks_like_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS


def _image_item(root: Path, path: Path, label: str | None) -> SourceItem:
    raw = str(path.absolute())
    full = printable(raw)
    payload = {"path": full, **({"label": label} if label is not None else {})}
    if full != raw:
        payload["path_escaped"] = True  # the stored path has backslash escapes for its bytes
    return SourceItem(key=printable(str(path.relative_to(root))), image=path.absolute(),
                      payload=payload)


def _skip(root: Path, path: Path, why: str) -> SourceItem:
    key = printable(str(path.relative_to(root)))
    return SourceItem(key=key, error=f"{key}: {why}")


def read_texts(path: str | Path, column: str = "text") -> Iterator[SourceItem]:
    """Texts: one per line of a .txt file, or a column of a table. Lines that are not UTF-8
    are skipped and reported."""
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise ConfigError(f"text file '{p}' does not exist (--texts)")
        for n, line in enumerate(_lines(p)):
            if isinstance(line, _Bad):
                yield SourceItem(key=f"{p.name}:{n}", error=f"{p}:{n + 1} is not valid UTF-8 "
                                 f"({line.reason}); save the file as UTF-8")
                continue
            yield SourceItem(key=f"{p.name}:{n}", text=line, payload={"text": line, "line": n})
        return
    for n, row in enumerate(read_table(p)):
        if ROW_ERROR in row:
            yield SourceItem(key=f"{p.name}:{n}", error=row[ROW_ERROR])
            continue
        if column not in row:
            raise ConfigError(f"table '{p}' has no column '{column}' (columns: {sorted(row)}); "
                              "name it with --text-column")
        yield SourceItem(key=f"{p.name}:{n}", text=str(row[column]), payload={"text": str(row[column])})


_BLOCK = 512


def read_webdataset(shards: list[str | Path]) -> Iterator[SourceItem]:
    """WebDataset tar shards as img2dataset writes them: ``key.jpg`` + ``key.txt``/``key.json``.

    Every sample is yielded, a sample without an image or caption too (with ``None``), so the
    pipeline reports it as skipped instead of silently dropping it. A damaged shard is read
    around the damage: a corrupt header is skipped to the next valid one, a truncated file is
    read up to the cut; each loss is yielded as a skipped item that says where and how much
    was read.
    """
    for shard in shards:
        shard = Path(shard)
        if not shard.is_file():
            raise ConfigError(f"WebDataset shard '{shard}' does not exist")
        samples, order, problems = _read_shard(shard)
        for stem in order:
            parts = samples[stem]
            key = f"{shard.name}/{stem}"
            img = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
            try:
                meta = json.loads(parts["json"].decode("utf-8")) if "json" in parts else {}
                if not isinstance(meta, dict):
                    raise ValueError("not a JSON object")
                text = parts["txt"].decode("utf-8") if "txt" in parts else meta.get("caption")
            except UnicodeDecodeError as exc:
                yield SourceItem(key=key, error=f"{key}: a text member is not UTF-8 (byte "
                                 f"0x{exc.object[exc.start]:02x} at {exc.start})")
                continue
            except ValueError as exc:
                yield SourceItem(key=key, error=f"{key}.json is not valid JSON ({exc})")
                continue
            yield SourceItem(key=key, image=img, text=text,
                             payload={"shard": shard.name, "key": stem,
                                      **{k: v for k, v in meta.items()
                                         if isinstance(v, (str, int, float, bool))}})
        for n, problem in enumerate(problems):
            yield SourceItem(key=f"{shard.name}#damage{n}", error=problem)


def _read_shard(shard: Path) -> tuple[dict[str, dict[str, bytes]], list[str], list[str]]:
    """(members by sample stem and extension, stems in order, damage reports)."""
    import zlib

    size = shard.stat().st_size
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    problems: list[str] = []
    try:
        tf = tarfile.open(shard, mode="r:", ignore_zeros=True)
        plain = True
    except tarfile.ReadError:
        try:
            tf = tarfile.open(shard, mode="r:*", ignore_zeros=True)  # compressed shard
            plain = False
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            return {}, [], [f"shard {shard} is not a readable tar archive ({exc}); 0 samples read"]
    expected = 0  # where the next header should start (uncompressed shards)
    members = 0
    with tf:
        while True:
            try:
                m = tf.next()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                problems.append(f"shard {shard} is unreadable after {members} members ({exc}); "
                                "the rest of it is lost")
                return samples, order, problems
            if m is None:
                break
            if plain and m.offset > expected and not _zeros(shard, expected, m.offset):
                problems.append(
                    f"shard {shard}: bytes {expected}-{m.offset} are damaged (a corrupt header); "
                    f"the member(s) stored there are lost; reading resumed at '{m.name}'")
            expected = m.offset_data + -(-m.size // _BLOCK) * _BLOCK
            if not m.isfile():
                continue
            try:
                data = tf.extractfile(m).read()
            except (tarfile.TarError, OSError, EOFError, zlib.error):
                data = b""
            if len(data) != m.size:
                problems.append(f"shard {shard} is truncated at {size} bytes: member '{m.name}' "
                                f"is cut off; {members} members before it were read")
                return samples, order, problems
            members += 1
            stem, _, ext = m.name.partition(".")
            if stem not in samples:
                samples[stem] = {}
                order.append(stem)
            samples[stem][ext.lower()] = data
    if plain and expected < size and not _zeros(shard, expected, size):
        problems.append(f"shard {shard}: bytes {expected}-{size} after the last readable member "
                        f"are not a valid member (a damaged or truncated header); {members} "
                        "members were read")
    return samples, order, problems


def _zeros(path: Path, start: int, end: int) -> bool:
    """True when bytes [start, end) are all zero (tar padding, end-of-archive blocks)."""
    with path.open("rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False
            left -= len(chunk)
    return True


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
