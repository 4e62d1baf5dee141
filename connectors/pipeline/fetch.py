"""The fetch stage: a table's image URLs downloaded, checked and kept before embedding.

A reader yields a row whose image is an ``http(s)://`` URL as a :class:`SourceItem` with
``url`` set and no image; :func:`fetch_items` maps each such item to one whose ``image`` is
the downloaded file, kept by content hash (:mod:`.image_store`), with the URL in its
``url`` field. Every download is bounded: at most ``max_bytes`` (a larger ``Content-Length``
is refused before the body is read; a body that grows past it is cut off), at most
``timeout_s`` in all, http(s) only (also after redirects), and the bytes must decode as an
image. A URL that fails any of these becomes a skipped item with a one-line reason; nothing
of it is kept. Downloads run ``workers`` at a time, in order.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from asif_index.errors import ConfigError, InputError
from connectors.pipeline.image_store import image_format, store_image

SCHEMES = ("http://", "https://")
_CHUNK = 1 << 16


def is_url(text: object) -> bool:
    return isinstance(text, str) and text[:8].lower().startswith(SCHEMES)


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on each download: bytes, seconds (connect to last byte), parallel downloads."""

    max_bytes: int = 20 * 2**20
    timeout_s: float = 20.0
    workers: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or \
                self.max_bytes < 1:
            raise ConfigError(f"max_bytes must be a positive whole number; got {self.max_bytes!r}")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s <= 600):
            raise ConfigError(f"timeout_s must be in (0, 600] seconds; got {self.timeout_s!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or \
                not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be 1 to 64; got {self.workers!r}")


class FetchError(InputError):
    """A URL that could not be fetched as an image (the message says why)."""


class _HttpOnly(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_url(newurl):
            raise FetchError(f"image URL '{req.full_url[:200]}' redirects to a non-http(s) "
                             f"address", req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnly)


def fetch_bytes(url: str, limits: FetchLimits = FetchLimits()) -> bytes:
    """The body at ``url`` within ``limits``, or FetchError with a one-line reason."""
    shown = url[:200]
    if not is_url(url):
        raise FetchError(f"'{shown}' is not an http(s) URL", url)
    deadline = time.monotonic() + limits.timeout_s
    req = urllib.request.Request(url, headers={"User-Agent": "asif-index/0.1",
                                               "Accept": "image/*"})
    try:
        with _OPENER.open(req, timeout=limits.timeout_s) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise FetchError(f"image URL '{shown}' is {int(declared):,} bytes, over the "
                                 f"{limits.max_bytes:,}-byte limit", url)
            parts, got = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise FetchError(f"image URL '{shown}' took longer than "
                                     f"{limits.timeout_s:g} s", url)
                # read1: what has arrived, so a server that dribbles still meets the deadline
                chunk = resp.read1(_CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if got > limits.max_bytes:
                    raise FetchError(f"image URL '{shown}' sent more than the "
                                     f"{limits.max_bytes:,}-byte limit", url)
                parts.append(chunk)
            return b"".join(parts)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"image URL '{shown}' answered HTTP {exc.code} ({exc.reason})",
                         url) from None
    except (socket.timeout, TimeoutError):
        raise FetchError(f"image URL '{shown}' took longer than {limits.timeout_s:g} s",
                         url) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"image URL '{shown}' is unreachable ({str(reason)[:120]})",
                         url) from None


def fetch_image(url: str, images_dir: Path, limits: FetchLimits = FetchLimits()) -> Path:
    """Download, check and keep one image -> its stored path (FetchError: nothing kept)."""
    data = fetch_bytes(url, limits)
    try:
        ext = image_format(url[:200], data, "image URL")
    except InputError as exc:
        raise FetchError(str(exc), url) from None
    return store_image(data, ext, images_dir)


def fetch_items(items: Iterable, images_dir: str | Path,
                limits: FetchLimits = FetchLimits()) -> Iterator:
    """Items with ``url`` set -> the same items with ``image`` the downloaded file (payload
    ``path``: where it is kept, ``url``: where it came from), or skipped with the reason;
    other items pass unchanged, in order."""
    images_dir = Path(images_dir)

    def one(it):
        if getattr(it, "url", None) is None or it.error or it.image is not None:
            return it
        try:
            path = fetch_image(it.url, images_dir, limits)
        except FetchError as exc:
            return dataclasses.replace(it, error=str(exc))
        return dataclasses.replace(it, image=path,
                                   payload={**it.payload, "path": str(path), "url": it.url})

    with ThreadPoolExecutor(limits.workers, thread_name_prefix="asif-fetch") as pool:
        # map keeps the order; a window of 4x workers bounds what waits in memory
        window: list = []
        for it in items:
            window.append(pool.submit(one, it))
            if len(window) >= 4 * limits.workers:
                yield window.pop(0).result()
        for f in window:
            yield f.result()


class FetchingSource:
    """Read items whose image URLs are downloaded as ingestion reaches them (sized, so a
    progress bar or a job knows the total before the first download)."""

    def __init__(self, items: list, images_dir: str | Path,
                 limits: FetchLimits = FetchLimits()) -> None:
        self.items, self.images_dir, self.limits = items, images_dir, limits

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator:
        return fetch_items(self.items, self.images_dir, self.limits)

    def after(self, done: int) -> "FetchingSource":
        """The items from ``done`` on (a resumed run downloads nothing before them)."""
        return FetchingSource(self.items[done:], self.images_dir, self.limits)


def needs_fetch(items: Iterable) -> bool:
    return any(getattr(it, "url", None) is not None and it.image is None and not it.error
               for it in items)


__all__ = ["FetchError", "FetchLimits", "FetchingSource", "fetch_bytes", "fetch_image",
           "fetch_items", "is_url", "needs_fetch"]
