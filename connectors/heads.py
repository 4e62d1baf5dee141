"""Text-trained classifier heads kept beside an index (``asif-index train-text-classifier``).

A head is a few megabytes of weights over anchor ids, so it lives in the local cache directory
under the index's creation uid (not in the database): ``<cache>/heads/<index key>/<name>.npz``.
Its anchor version is recorded; after anchor updates it still applies (new anchors carry no
weight, removed ones are skipped) and ``asif-index classify --head`` says it is older.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from asif_index.anchors import AnchorManifest
from asif_index.errors import ConfigError, InputError
from asif_index.methods.text_classifier import TextHead
from connectors.anchor_cache import index_key
from connectors.base import VectorStore

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_head_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ConfigError(f"head name '{name}' is not allowed: use 1-64 letters, digits, '_' or "
                          "'-', starting with a letter or digit (it becomes a file name and a "
                          "payload field)")
    return name


def heads_dir(store: VectorStore, man: AnchorManifest, cache_dir: str | Path) -> Path:
    # the creation uid tells a re-created index of the same name from the old one; an index
    # made before uids is named by its store and location alone
    key = index_key(store, man) or hashlib.sha1(
        f"{store.backend}|{store.location}|".encode()).hexdigest()[:16]
    return Path(cache_dir) / "heads" / key


def head_path(store: VectorStore, man: AnchorManifest, cache_dir: str | Path, name: str) -> Path:
    return heads_dir(store, man, cache_dir) / f"{check_head_name(name)}.npz"


def load_head(store: VectorStore, man: AnchorManifest, cache_dir: str | Path,
              name: str) -> TextHead:
    """The head called ``name`` of this index, or a path to a head file."""
    p = Path(name)
    if p.suffix == ".npz" and p.is_file():
        return TextHead.load(p)
    path = head_path(store, man, cache_dir, name)
    if not path.is_file():
        have = sorted(x.stem for x in path.parent.glob("*.npz")) if path.parent.is_dir() else []
        raise InputError(f"this index has no classifier head '{name}' (have: "
                         f"{', '.join(have) or 'none'}); train it with `asif-index "
                         f"train-text-classifier --head {name} --labels ...`", name)
    return TextHead.load(path)


def list_heads(store: VectorStore, man: AnchorManifest, cache_dir: str | Path) -> list[str]:
    d = heads_dir(store, man, cache_dir)
    return sorted(x.stem for x in d.glob("*.npz")) if d.is_dir() else []
