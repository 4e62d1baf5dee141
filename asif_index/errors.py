"""One exception base and a small tree of specific errors.

Every error says what was wrong *and* how to fix it. Backend-specific exceptions (Qdrant,
Milvus, torch, PIL) are translated into these at the boundary, so callers only ever catch
``AsifError`` subclasses.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """Text any stream can print and any store can hold: lone surrogates (undecodable
    file-name or shell bytes) shown as backslash escapes instead of failing the message or
    the write that names them."""
    try:  # bytes a file name carried as surrogate escapes come back as \xNN
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # other lone surrogates (\ud800) as \uNNNN
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class AsifError(Exception):
    """Base class of every error raised by asif-index."""


class ConfigError(AsifError, ValueError):
    """A setting, spec string or argument is invalid."""


class MissingDependencyError(AsifError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


class InputError(AsifError, ValueError):
    """One input item (image, text, row) is unusable. ``item`` names it."""

    def __init__(self, message: str, item: str | None = None) -> None:
        super().__init__(message)
        self.item = item


class FilterError(InputError):
    """A search or delete filter that cannot run: a bad field name, operator or value."""


class ImageDecodeError(InputError):
    """An image file is missing, unreadable, truncated or of an unsupported mode/size."""


class EmptyTextError(InputError):
    """A text input is empty or whitespace only."""


class ShapeError(AsifError, ValueError):
    """An array has the wrong shape, dimension or dtype."""


class NonFiniteError(AsifError, ValueError):
    """An array holds NaN or infinity."""


class ZeroVectorError(AsifError, ValueError):
    """A row has zero norm, so its cosine similarity is undefined."""


class EncoderMismatchError(AsifError):
    """Stored data was made with other encoders (or k, p) than the ones in use."""


class ModalityError(AsifError, ValueError):
    """A query or item of a modality the operation does not accept."""


class AnchorError(AsifError, ValueError):
    """Anchor set misuse: unknown or duplicate ids, empty set, k larger than allowed."""


class BackendError(AsifError):
    """A vector-database operation failed."""


class StorageError(BackendError):
    """The database did not keep what it acknowledged (a full disk, a dropped write): found
    by reading the write back, before anything that depends on it happens."""


class BackendUnavailableError(BackendError):
    """The database server cannot be reached (after retries)."""


class CollectionError(BackendError):
    """A collection is missing, or exists with an incompatible schema."""


class ConsistencyError(AsifError):
    """Concurrent writers, updaters and readers of one index got in each other's way."""


class UpdateInProgressError(ConsistencyError):
    """An anchor update is running in another process (its heartbeat is live)."""


class UpdateInterruptedError(ConsistencyError):
    """An anchor update died (its heartbeat expired) and must be resumed first."""


class VersionRetiredError(ConsistencyError):
    """The anchor version a reader is pinned to was garbage-collected; refresh the reader."""
