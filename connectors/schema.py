"""Declared payload fields: the types a user gives at ``init`` (``--field year:integer``).

A declared field gets a payload index on Qdrant (Edge and server), so filters on it stay fast
at scale, and every write checks it: an item whose value has another type is refused with a
one-line reason naming the item, the field and the type, before anything of its batch is
written. Undeclared fields are stored as they come (see :mod:`connectors.pipeline.metadata`).
``source`` is always declared (keyword): every item has it and takedowns filter on it.

Types: ``keyword`` (text), ``integer`` (whole numbers, not booleans), ``float`` (any number),
``bool``, ``datetime`` (an ISO 8601 date or datetime text, e.g. ``2024-05-01`` or
``2024-05-01T12:00:00Z``; ranges compare instants, see :func:`connectors.filters.instant`).
Milvus keeps user fields in one JSON column, whose path indexes Milvus Lite 2.5.1
does not build, so there a declaration checks types only.
"""

from __future__ import annotations

from typing import Any, Iterable

from asif_index.errors import ConfigError, FilterError

SCHEMA_KEY = "fields"  # manifest.extra: {name: type}
FIELD_TYPES = ("keyword", "integer", "float", "bool", "datetime")
DEFAULT_FIELDS = {"source": "keyword"}
# Qdrant payload index kinds (PayloadSchemaType member names); a bool is indexed on its
# keyword twin on Qdrant Edge (connectors.qdrant_layout.BOOL_TWIN), which its filters match
QDRANT_KIND = {"keyword": "Keyword", "integer": "Integer", "float": "Float", "bool": "Bool",
               "datetime": "Keyword"}


def check_fields(fields: dict[str, str] | None) -> dict[str, str]:
    """A validated declaration (with the default fields), or a one-line error."""
    from connectors.filters import check_field

    out = dict(DEFAULT_FIELDS)
    for name, kind in (fields or {}).items():
        try:
            check_field(name)
        except FilterError as exc:
            raise ConfigError(f"--field {name}: {str(exc).removeprefix('filter ')}") from None
        if kind not in FIELD_TYPES:
            raise ConfigError(f"--field {name}:{kind}: the type is one of "
                              f"{', '.join(FIELD_TYPES)}")
        if name in DEFAULT_FIELDS and kind != DEFAULT_FIELDS[name]:
            raise ConfigError(f"--field {name}:{kind}: '{name}' is always a "
                              f"{DEFAULT_FIELDS[name]}")
        out[name] = kind
    return out


def parse_field_specs(texts: Iterable[str] | None) -> dict[str, str]:
    """``--field NAME:TYPE`` values."""
    out: dict[str, str] = {}
    for t in texts or []:
        name, colon, kind = t.partition(":")
        if not colon:
            raise ConfigError(f"--field '{t}': give NAME:TYPE, e.g. --field year:integer "
                              f"(types: {', '.join(FIELD_TYPES)})")
        if name in out:
            raise ConfigError(f"--field: '{name}' is declared twice; keep one")
        out[name.strip()] = kind.strip().lower()
    return check_fields(out)


def declared(manifest) -> dict[str, str]:
    """The index's declared fields (an index made before declarations: none)."""
    return dict((manifest.extra.get(SCHEMA_KEY) if manifest is not None else None) or {})


def _fits(kind: str, v: Any) -> bool:
    if kind == "keyword":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "datetime":
        from connectors.filters import instant

        return instant(v) is not None
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def type_problem(payload: dict[str, Any], fields: dict[str, str]) -> str | None:
    """Why a payload does not fit the declared fields (None: it does)."""
    for name, kind in fields.items():
        if name in payload and payload[name] is not None and not _fits(kind, payload[name]):
            v = payload[name]
            return (f"field '{name}' is declared {kind} but holds {type(v).__name__} "
                    f"{ascii(v)[:60]}")
    return None


__all__ = ["DEFAULT_FIELDS", "FIELD_TYPES", "SCHEMA_KEY", "check_fields", "declared",
           "parse_field_specs", "type_problem"]
