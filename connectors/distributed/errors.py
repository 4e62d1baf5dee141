"""Errors raised on Ray workers, mapped back to the asif errors a user can act on."""

from __future__ import annotations

from asif_index.errors import AsifError


def asif_error_of(exc: Exception) -> Exception:
    """The asif error a worker raised, so a user sees the cause and its fix. Ray Data wraps a
    failed batch in a UserCodeException that keeps only the text of the original error, so
    the error is rebuilt from that text when no exception object carries it."""
    import re

    from asif_index import errors

    seen: BaseException | None = exc
    for _ in range(8):
        if isinstance(seen, AsifError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
        if seen is None:
            break
    found = re.findall(r"asif_index\.errors\.(\w+): (.+)", str(exc))
    if found:
        name, message = found[-1]
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, AsifError):
            try:
                return cls(message.strip())
            except TypeError:  # an error class with other required arguments
                pass
    return exc
