"""Named image roots: item paths stored relative to a folder the index names, so a moved
photo folder is one document write (``asif-index index relocate NAME DIR``), not a rewrite
of every item.

An item ingested with ``--image-root photos=/data/photos`` stores ``root: "photos"`` and
``path: "dogs/a.jpg"`` (POSIX, relative); :func:`resolve` joins it with the folder the index's
``image_roots`` document names now. Items without ``root`` keep their absolute ``path``. The
document is its own meta row (not the anchor manifest), so a relocate never races an anchor
update's manifest writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from asif_index.errors import ConfigError

DOC = "image_roots"  # meta document: {"roots": {name: absolute folder}}
ROOT_FIELD = "root"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_root_specs(texts: Iterable[str] | None) -> dict[str, Path]:
    """``--image-root NAME=DIR`` values (DIR must exist)."""
    out: dict[str, Path] = {}
    for t in texts or []:
        name, eq, folder = str(t).partition("=")
        if not eq:
            raise ConfigError(f"--image-root '{t}': give NAME=DIR, e.g. --image-root "
                              "photos=/data/photos")
        if not NAME.match(name):
            raise ConfigError(f"--image-root '{t}': a root name is 1-64 letters, digits, "
                              "'_', '.' and '-'")
        d = Path(folder).expanduser()
        if not d.is_dir():
            raise ConfigError(f"--image-root '{t}': folder '{d}' does not exist")
        if name in out:
            raise ConfigError(f"--image-root: '{name}' is given twice; keep one")
        out[name] = d.resolve()
    return out


def roots_of(store) -> dict[str, Path]:
    doc = store.get_doc(DOC) or {}
    return {k: Path(v) for k, v in (doc.get("roots") or {}).items()}


def register(store, roots: dict[str, Path]) -> None:
    """Record these roots; a name the index already holds for another folder is an error
    (moving a folder is :func:`relocate`'s job, so no ingest silently re-points old items)."""
    have = roots_of(store)
    for name, d in roots.items():
        if name in have and have[name] != d:
            raise ConfigError(f"image root '{name}' is {have[name]} in this index, not {d}; "
                              f"if the folder moved, run 'asif-index index relocate {name} "
                              f"{d}' first")
    if set(roots) - set(have):
        new = {**{k: str(v) for k, v in have.items()}, **{k: str(v) for k, v in roots.items()}}
        store.put_doc(DOC, {"roots": new})
        if {k: Path(v) for k, v in new.items()} != roots_of(store):  # read back the write
            from asif_index.errors import StorageError

            raise StorageError(f"the image roots document did not read back as written in "
                               f"{store.backend}")


def relocate(store, name: str, folder: str | Path) -> tuple[Path, Path]:
    """Point root ``name`` at ``folder``. -> (old, new)."""
    have = roots_of(store)
    if name not in have:
        known = ", ".join(sorted(have)) or "none"
        raise ConfigError(f"this index has no image root '{name}' (it has: {known}); "
                          "roots are named at ingest with --image-root NAME=DIR")
    new = Path(folder).expanduser()
    if not new.is_dir():
        raise ConfigError(f"folder '{new}' does not exist; move the photos there first")
    new = new.resolve()
    store.put_doc(DOC, {"roots": {**{k: str(v) for k, v in have.items()}, name: str(new)}})
    if roots_of(store).get(name) != new:
        from asif_index.errors import StorageError

        raise StorageError(f"the image roots document did not read back as written in "
                           f"{store.backend}")
    return have[name], new


def relativise(items: Iterable, roots: dict[str, Path]) -> list:
    """Source items whose ``path`` lies under a root: ``root`` + relative ``path``."""
    out = []
    for it in items:
        p = it.payload.get("path") if it.error is None else None
        if p and not it.payload.get("path_escaped"):
            path = Path(p)
            for name, d in roots.items():
                try:
                    rel = path.relative_to(d)
                except ValueError:
                    continue
                it.payload = {**it.payload, ROOT_FIELD: name, "path": rel.as_posix()}
                break
        out.append(it)
    return out


def resolve(payload: dict[str, Any], roots: dict[str, Path]) -> Path | None:
    """The file an item's payload points at now (None: it has no path)."""
    p = payload.get("path")
    if not p:
        return None
    name = payload.get(ROOT_FIELD)
    if name is None:
        return Path(p)
    if name not in roots:
        raise ConfigError(f"image root '{name}' is not recorded in this index")
    rel = Path(p)
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"stored path '{p}' under root '{name}' is not a relative path")
    return roots[name] / rel


__all__ = ["DOC", "ROOT_FIELD", "parse_root_specs", "register", "relativise", "relocate",
           "resolve", "roots_of"]
