"""Where one request's time goes: named stages (encode, project, search) timed while a caller
records, for the service's ``Server-Timing`` response header and its benchmark.

Nothing is recorded unless :func:`recording` is active in the current context, so library
calls outside the service pay one context-variable read per stage. The record is a plain dict
shared by reference: the service's middleware opens it, and the route (which runs in a worker
thread with a copy of the context) adds to the same dict.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_record: ContextVar[dict[str, float] | None] = ContextVar("asif_stage_seconds", default=None)

# The header's stage names, in the order a search runs them.
STAGES = ("encode", "project", "search")


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the enclosed block's wall time to stage ``name`` of the active record (if any)."""
    acc = _record.get()
    if acc is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """A fresh record of stage seconds for the enclosed block (and what it starts)."""
    acc: dict[str, float] = {}
    token = _record.set(acc)
    try:
        yield acc
    finally:
        _record.reset(token)


def server_timing(acc: dict[str, float], total_s: float | None = None) -> str:
    """The record as a ``Server-Timing`` header value (milliseconds): ``encode;dur=8.1, ...``."""
    parts = [f"{name};dur={acc[name] * 1000:.2f}"
             for name in (*STAGES, *sorted(set(acc) - set(STAGES))) if name in acc]
    if total_s is not None:
        parts.append(f"total;dur={total_s * 1000:.2f}")
    return ", ".join(parts)


def parse_server_timing(value: str | None) -> dict[str, float]:
    """A ``Server-Timing`` header value -> {stage: milliseconds} (entries without dur skipped)."""
    out: dict[str, float] = {}
    for part in (value or "").split(","):
        name, _, params = part.strip().partition(";")
        for p in params.split(";"):
            key, _, val = p.strip().partition("=")
            if key == "dur" and name:
                try:
                    out[name.strip()] = float(val)
                except ValueError:
                    pass
    return out


__all__ = ["STAGES", "parse_server_timing", "recording", "server_timing", "stage"]
