"""Images the service may read: only files under the configured roots, and thumbnails of them."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

THUMB_PX = 256


class PathRefused(Exception):
    """A path outside the roots (or no roots configured): answered 403."""


class ImageMissing(Exception):
    """A path inside the roots that is not a file: answered 404."""


MAX_PATH_CHARS = 4096  # Linux's PATH_MAX: a longer path can name no file


def resolve_under(ref: str, roots: list[Path], kind: str = "file") -> Path:
    """The real file (or folder, ``kind="dir"``) ``ref`` names (absolute, or relative to one
    of ``roots``), refused unless it lies under a root after every symlink and '..' is
    resolved."""
    if not roots:
        raise PathRefused("this service reads no image paths: start it with --image-root DIR "
                          "(ASIF_SERVE_IMAGE_ROOTS) to allow a folder")
    if "\x00" in ref:
        raise PathRefused("an image path cannot contain a NUL byte")
    if len(ref) > MAX_PATH_CHARS:
        raise ImageMissing(f"an image path is at most {MAX_PATH_CHARS} characters (got "
                           f"{len(ref)}); name the file by a shorter path")
    p = Path(ref)
    candidates = [p] if p.is_absolute() else [r / p for r in roots]
    inside = False
    for c in candidates:
        real = c.resolve(strict=False)
        if any(real == r or real.is_relative_to(r) for r in roots):
            inside = True
            if real.is_file() if kind == "file" else real.is_dir():
                return real
    if not inside:
        raise PathRefused(f"'{ref}' is outside the image roots this service may read")
    raise ImageMissing(f"no {'file' if kind == 'file' else 'folder'} '{ref}' under the image "
                       "roots")


def inside(path: Path, roots: list[Path]) -> bool:
    real = Path(path).resolve(strict=False)
    return any(real == r or real.is_relative_to(r) for r in roots)


@lru_cache(maxsize=2048)
def _thumb(path: str, mtime_ns: int) -> bytes:
    from PIL import Image

    from asif_index.encoders.image import load_image

    img = load_image(Path(path), path)  # guarded against decompression bombs
    img.thumbnail((THUMB_PX, THUMB_PX), Image.BICUBIC)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def thumbnail(path: Path) -> bytes:
    """JPEG bytes of a thumbnail (at most 256 px a side), cached by path and modification time."""
    return _thumb(str(path), path.stat().st_mtime_ns)
