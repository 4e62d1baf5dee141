"""What identifies an encoder: a digest of the files that decide its output.

A file or folder name says nothing about its weights (two ``model.pth`` of different
training runs share one), so the embedding cache key and the manifest's encoder check use
``<kind>:<name>@<digest>``, the digest taken over the weight, config and tokenizer files.
Digests are remembered by (real path, size, mtime), so a large weight file is hashed once,
not at every start.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Iterable

DIGEST_CHARS = 12
# The files of a model folder that decide what it outputs (weights, config, tokenizer);
# README and training leftovers do not.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pth", ".pt", ".txt", ".model")
_SKIP = {"README.md", "readme.txt"}
_lock = threading.Lock()
_memo: dict[str, str] = {}


def _cache_file() -> Path:
    root = os.environ.get("ASIF_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "asif-index")
    return Path(root) / "digests.json"


def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def file_digest(path: str | Path) -> str:
    """sha256 of one file (hex), remembered by path, size and mtime."""
    p = Path(path)
    stamp = _stamp(p)
    with _lock:
        if stamp in _memo:
            return _memo[stamp]
        cache = _read_cache()
        if stamp in cache:
            _memo[stamp] = cache[stamp]
            return cache[stamp]
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _lock:
        _memo[stamp] = digest
        cache = _read_cache()
        cache[stamp] = digest
        _write_cache(cache)
    return digest


def _read_cache() -> dict:
    try:
        doc = json.loads(_cache_file().read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(doc: dict) -> None:
    f = _cache_file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, f)
    except OSError:  # a read-only home: digests are recomputed next time, nothing breaks
        pass


def files_digest(paths: Iterable[tuple[str, Path]]) -> str:
    """One digest over (label, file) pairs: each file's digest under its label, in order."""
    h = hashlib.sha256()
    for label, p in sorted(paths, key=lambda x: x[0]):
        h.update(f"{label}\0{file_digest(p)}\n".encode())
    return h.hexdigest()[:DIGEST_CHARS]


def folder_digest(folder: str | Path) -> str:
    """Digest of a model folder's weight, config and tokenizer files (sub-folders too)."""
    root = Path(folder)
    files = [(str(p.relative_to(root)), p) for p in root.rglob("*")
             if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES and p.name not in _SKIP
             and ".cache" not in p.parts]
    return files_digest(files)


def tensors_digest(state_dict: dict) -> str:
    """Digest of an in-memory state dict (names, shapes, bytes)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k]
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else t
        h.update(f"{k}\0{tuple(arr.shape)}\0{arr.dtype}\n".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:DIGEST_CHARS]


def with_digest(name: str, digest: str) -> str:
    return f"{name}@{digest}"


def base_name(identity: str) -> str:
    """The name part of an identity (what an index made before digests stored)."""
    return identity.rsplit("@", 1)[0]
