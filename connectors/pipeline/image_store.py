"""Images kept by content: each stored once, under ``<dir>/<2 hex>/<sha256><ext>``, written
to a temporary name and moved into place so that no reader sees half a file. Used for the
images sent to the service and the images fetched from URLs (:mod:`.fetch`)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

from asif_index.errors import InputError

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
              "TIFF": ".tif"}


def image_format(name: str, data: bytes, what: str = "upload") -> str:
    """The file extension of an image's bytes, or InputError naming ``what`` ``name``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()  # reads the whole stream: a truncated file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{what} '{name}' is not a decodable image ({type(exc).__name__}: "
                         f"{str(exc)[:120]})", name) from None
    if fmt not in EXTENSIONS:
        raise InputError(f"{what} '{name}' is a {fmt} image; send JPEG, PNG, WebP, GIF, BMP "
                         "or TIFF", name)
    return EXTENSIONS[fmt]


def store_image(data: bytes, ext: str, images_dir: Path) -> Path:
    """-> where the image is kept (the same bytes twice: one file)."""
    digest = hashlib.sha256(data).hexdigest()
    path = Path(images_dir) / digest[:2] / f"{digest}{ext}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


__all__ = ["EXTENSIONS", "image_format", "store_image"]
