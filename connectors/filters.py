"""The one filter model every entry point and every store shares.

A filter is a tree: :class:`Cond` (field, operator, value) leaves under :class:`All` (AND),
:class:`Any_` (OR) and :class:`Not`. It is parsed and validated once, at the boundary
(:func:`parse` for Python and JSON, :func:`parse_cli` for ``--filter`` text), and each store
renders the validated tree itself: Qdrant as a ``Filter`` object, Milvus as an expression in
which every field name comes from a closed character set and every value is a JSON literal.
The version fence is added by the store *outside* the user's part (``(user) and fence``), so
no filter can widen what a pinned reader sees.

Semantics (what :func:`matches` computes, and what every store is tested against):
- ``eq``/``in``: the field holds the value (a bool never equals a number);
- ``ne``/``nin``/``Not``: the complement of the above, so items without the field match;
- ``gt``/``gte``/``lt``/``lte``: the field holds a number (ints and floats; not bools) in range,
  or, when the bound is a date or datetime (ISO 8601, :func:`instant`), the field holds a
  date or datetime text that falls in range (times without a zone are UTC);
- ``exists``: the field is present (not null).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Union

from asif_index.errors import FilterError

# Field names users may filter on: the characters no engine's key syntax gives a meaning to
# (Qdrant reads '.', '[' and ']' as a path; Milvus parses quotes and brackets).
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
RESERVED_PREFIX = "asif_"  # the stores' own payload fields (validity, item id, k-th)
MODALITY = "modality"  # the item's modality: a column, not a payload field
MODALITIES = ("image", "text")
MAX_STRING = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_IN = 1024
MAX_NODES = 256

OPS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists")
RANGE_OPS = ("gt", "gte", "lt", "lte")
Scalar = Union[str, int, float, bool]
# A stored string that reads as a date or datetime is also kept as seconds since 1970 under
# this prefix (one number per field, on every store), which date ranges compare.
DATE_TWIN = "asif_d_"
DATETIME = "datetime"  # Cond.kind of a range whose bound is a date
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?"
                      r"(?:Z|z|[+-]\d{2}:?\d{2})?)?$")


def instant(text: Any) -> float | None:
    """Seconds since 1970-01-01 UTC of an ISO 8601 date (``2024-05-01``) or datetime
    (``2024-05-01T12:30``, ``...:05Z``, ``...+02:00``; no zone = UTC); None for anything
    else (other strings, numbers, impossible dates like 2024-02-30)."""
    if not isinstance(text, str) or len(text) > 40 or not _INSTANT.fullmatch(text):
        return None
    t = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    frac = re.search(r"\.(\d+)", t)
    if frac and len(frac.group(1)) > 6:  # Python keeps microseconds
        t = t.replace(frac.group(0), "." + frac.group(1)[:6], 1)
    try:
        d = datetime.fromisoformat(t)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def date_twins(payload: dict[str, Any]) -> dict[str, float]:
    """The DATE_TWIN fields a stored payload gets: one per date or datetime string."""
    out = {}
    for k, v in payload.items():
        if isinstance(v, str) and not k.startswith(RESERVED_PREFIX):
            t = instant(v)
            if t is not None:
                out[DATE_TWIN + k] = t
    return out


@dataclass(frozen=True)
class Cond:
    field: str
    op: str
    value: Any = None  # a scalar; a tuple of scalars for in/nin; None for exists
    kind: str = ""  # DATETIME: a range on dates (value: the bound's text)

    @property
    def seconds(self) -> float:
        """A date range's bound as seconds since 1970 (UTC)."""
        t = instant(self.value)
        assert t is not None, self
        return t


@dataclass(frozen=True)
class All:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Any_:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Not:
    item: "Expr"


Expr = Union[Cond, All, Any_, Not]


def _bad(what: str, why: str) -> FilterError:
    return FilterError(f"filter {what}: {why}")


def check_field(name: Any) -> str:
    if not isinstance(name, str):
        raise _bad(repr(name), "a field name must be a string")
    shown = ascii(name[:80])
    if not FIELD_NAME.fullmatch(name):
        raise _bad(f"field {shown}", "a field name is 1-64 characters of letters, digits, '_' "
                   "and '-', starting with a letter or '_'")
    if name.startswith(RESERVED_PREFIX):
        raise _bad(f"field {shown}", f"fields starting with '{RESERVED_PREFIX}' are the index's "
                   "own and cannot be filtered on")
    return name


def _scalar(field: str, v: Any) -> Scalar:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if abs(v) >= 2**63:
            raise _bad(f"on '{field}'", f"the integer {v} is outside the 64-bit range")
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _bad(f"on '{field}'", f"the value {v} is not a finite number")
        return v
    if isinstance(v, str):
        if len(v) > MAX_STRING:
            raise _bad(f"on '{field}'", f"a string value is at most {MAX_STRING} characters "
                       f"(got {len(v)})")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(f"on '{field}'", "the value is not valid Unicode (a lone surrogate); "
                       "pass it as UTF-8 text") from None
        if _CONTROL.search(v):
            raise _bad(f"on '{field}'", "a value cannot hold control characters (tabs, line "
                       "breaks, NUL)")
        return v
    raise _bad(f"on '{field}'", f"a value is a string, number or boolean, not "
               f"{type(v).__name__} ({ascii(v)[:60]})")


def cond(field: str, op: str, value: Any = None) -> Cond:
    """A validated leaf."""
    field = field if field == MODALITY else check_field(field)
    if op not in OPS:
        raise _bad(f"on '{field}'", f"unknown operator '{op}'; use one of {', '.join(OPS)}")
    if op == "exists":
        if value not in (None, True):
            raise _bad(f"on '{field}'", "'exists' takes no value (or true); use not for absence")
        return Cond(field, op, None)
    if op in ("in", "nin"):
        if not isinstance(value, (list, tuple)):
            raise _bad(f"on '{field}'", f"'{op}' takes a list of values, e.g. [a, b]")
        if not value or len(value) > MAX_IN:
            raise _bad(f"on '{field}'", f"'{op}' takes 1 to {MAX_IN} values (got {len(value)})")
        vals = tuple(_scalar(field, v) for v in value)
    else:
        vals = _scalar(field, value)
        if op in RANGE_OPS and isinstance(vals, str) and field != MODALITY:
            if instant(vals) is None:
                raise _bad(f"on '{field}'", f"'{op}' compares numbers or dates (ISO 8601: "
                           f"2024-05-01, 2024-05-01T12:00:00Z); got {ascii(vals)[:60]}")
            return Cond(field, op, vals, DATETIME)
        if op in RANGE_OPS and isinstance(vals, bool):
            raise _bad(f"on '{field}'", f"'{op}' compares numbers or dates; got {vals}")
    if field == MODALITY:
        if op not in ("eq", "ne", "in", "nin"):
            raise _bad("on 'modality'", "modality takes =, !=, in and not in")
        for m in (vals if isinstance(vals, tuple) else (vals,)):
            if m not in MODALITIES:
                raise _bad("on 'modality'", f"modality is 'image' or 'text', not {ascii(m)[:40]}")
    return Cond(field, op, vals)


# ----------------------------------------------------------------------------- parsing
_WORD_OPS = {"$eq": "eq", "$ne": "ne", "$in": "in", "$nin": "nin", "$gt": "gt", "$gte": "gte",
             "$lt": "lt", "$lte": "lte", "$exists": "exists"}


def parse(obj: Any) -> Expr | None:
    """A filter from Python or JSON; None for no filter.

    Forms: ``{"field": value}`` (equality; several keys are ANDed; a list value means IN),
    ``{"field": {"gte": 2010, "lt": 2020}}`` (operators, '$' prefix optional),
    ``{"and": [...]}``, ``{"or": [...]}``, ``{"not": {...}}``, an already parsed tree, or a
    list of any of these (ANDed)."""
    return _parse(obj, [0])


def _parse(obj: Any, n: list[int]) -> Expr | None:
    n[0] += 1
    if n[0] > MAX_NODES:
        raise _bad("", f"more than {MAX_NODES} conditions")
    if obj is None:
        return None
    if isinstance(obj, (Cond, All, Any_, Not)):
        return obj
    if isinstance(obj, (list, tuple)):
        return _and([_parse(o, n) for o in obj])
    if not isinstance(obj, dict):
        raise _bad(ascii(obj)[:60], "a filter is an object of field: value (or and/or/not)")
    parts: list[Expr | None] = []
    for k, v in obj.items():
        lk = k.lower() if isinstance(k, str) else k
        if lk in ("and", "$and", "or", "$or"):
            if not isinstance(v, (list, tuple)) or not v:
                raise _bad(f"'{k}'", "takes a non-empty list of filters")
            subs = [s for s in (_parse(o, n) for o in v) if s is not None]
            parts.append(_and(subs) if lk.endswith("and") else
                         (Any_(tuple(subs)) if len(subs) > 1 else (subs[0] if subs else None)))
        elif lk in ("not", "$not"):
            sub = _parse(v, n)
            if sub is None:
                raise _bad("'not'", "takes a filter")
            parts.append(Not(sub))
        else:
            f = k if k == MODALITY else check_field(k)
            if isinstance(v, dict):
                if not v:
                    raise _bad(f"on '{f}'", "an empty operator object")
                for op, val in v.items():
                    o = _WORD_OPS.get(op, op) if isinstance(op, str) else op
                    parts.append(cond(f, o, val))
                    n[0] += 1
            elif isinstance(v, (list, tuple)):
                parts.append(cond(f, "in", list(v)))
            else:
                parts.append(cond(f, "eq", v))
    return _and(parts)


def _and(parts: Iterable[Expr | None]) -> Expr | None:
    items: list[Expr] = []
    for p in parts:
        if p is None:
            continue
        items.extend(p.items if isinstance(p, All) else [p])
    if not items:
        return None
    return items[0] if len(items) == 1 else All(tuple(items))


_CLI = re.compile(r"^\s*(?P<field>[^\s=!<>]+?)\s*(?P<op>!=|>=|<=|=|>|<|\s+not\s+in\s+|\s+in\s+|"
                  r"\s+exists\s*$)(?P<value>.*)$", re.S | re.I)
_CLI_OPS = {"=": "eq", "!=": "ne", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte",
            "in": "in", "not in": "nin", "exists": "exists"}


def _cli_value(text: str) -> Any:
    t = text.strip()
    try:
        return json.loads(t)
    except (json.JSONDecodeError, ValueError):
        return t


def _cli_list(text: str, what: str) -> list:
    t = text.strip()
    if not (t.startswith("[") and t.endswith("]")):
        raise _bad(ascii(what)[:80], "'in' takes a bracketed list: field in [a, b]")
    try:
        v = json.loads(t)
        if isinstance(v, list):
            return v
    except (json.JSONDecodeError, ValueError):
        pass
    return [_cli_value(x) for x in t[1:-1].split(",") if x.strip()]


def parse_cli(texts: Iterable[str] | None) -> Expr | None:
    """``--filter`` values, ANDed: ``field=value``, ``field!=value``, ``year>=2010``,
    ``album in [a,b]``, ``album not in [a,b]``, ``field exists``, or a JSON filter
    (``{"or": [...]}``). A value is read as JSON when it parses (``3``, ``true``), else as
    text."""
    parts = []
    for t in texts or []:
        if not isinstance(t, str) or not t.strip():
            raise _bad("''", "an empty --filter; write field=value")
        s = t.strip()
        if s.startswith("{") or s.startswith("["):
            try:
                parts.append(parse(json.loads(s)))
            except (json.JSONDecodeError, ValueError) as exc:
                raise _bad(ascii(s)[:80], f"is not valid JSON ({exc})") from None
            continue
        m = _CLI.match(s)
        if not m:
            raise _bad(ascii(s)[:80], "no operator; write field=value (also !=, >, >=, <, <=, "
                       "'field in [a,b]', 'field exists', or a JSON filter)")
        op = _CLI_OPS[" ".join(m["op"].split()).lower()]
        field = m["field"]
        if op == "exists":
            parts.append(cond(field, "exists"))
        elif op in ("in", "nin"):
            parts.append(cond(field, op, _cli_list(m["value"], s)))
        else:
            if not m["value"].strip():
                raise _bad(ascii(s)[:80], f"no value after the operator; write {field}=VALUE")
            parts.append(cond(field, op, _cli_value(m["value"])))
    return _and(parts)


# ------------------------------------------------------------------------- evaluation
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return False


def _leaf(c: Cond, have: Any, present: bool) -> bool:
    if c.op == "exists":
        return present and have is not None
    if c.op == "eq":
        return present and _same(have, c.value)
    if c.op == "ne":
        return not (present and _same(have, c.value))
    if c.op == "in":
        return present and any(_same(have, v) for v in c.value)
    if c.op == "nin":
        return not (present and any(_same(have, v) for v in c.value))
    if c.kind == DATETIME:
        have, bound = instant(have) if present else None, c.seconds
        if have is None:
            return False
    elif not present or isinstance(have, bool) or not isinstance(have, (int, float)):
        return False
    else:
        bound = c.value
    return {"gt": have > bound, "gte": have >= bound, "lt": have < bound,
            "lte": have <= bound}[c.op]


def uses_dates(expr: Expr | None) -> bool:
    """Whether a tree holds a date range (which needs the stores' date twins)."""
    if isinstance(expr, Cond):
        return expr.kind == DATETIME
    if isinstance(expr, Not):
        return uses_dates(expr.item)
    return expr is not None and any(uses_dates(e) for e in expr.items)


def matches(expr: Expr | None, payload: dict[str, Any], modality: str) -> bool:
    """The reference semantics (see the module docstring): what every store must return."""
    if expr is None:
        return True
    if isinstance(expr, Cond):
        if expr.field == MODALITY:
            return _leaf(expr, modality, True)
        return _leaf(expr, payload.get(expr.field), expr.field in payload)
    if isinstance(expr, All):
        return all(matches(e, payload, modality) for e in expr.items)
    if isinstance(expr, Any_):
        return any(matches(e, payload, modality) for e in expr.items)
    return not matches(expr.item, payload, modality)


def to_json(expr: Expr | None) -> dict | None:
    """The JSON form :func:`parse` reads back to the same tree (a service request's filter)."""
    if expr is None:
        return None
    if isinstance(expr, Cond):
        v = list(expr.value) if isinstance(expr.value, tuple) else expr.value
        return {expr.field: {expr.op: True if expr.op == "exists" else v}}
    if isinstance(expr, Not):
        return {"not": to_json(expr.item)}
    return {"and" if isinstance(expr, All) else "or": [to_json(e) for e in expr.items]}


def key(expr: Expr | None) -> str:
    """A stable text of the tree (cache keys, logs)."""
    return repr(expr)


def only_modality(expr: Expr | None) -> str | None:
    """The modality every matching item has, when the filter pins one (``modality=image``
    ANDed with anything), else None."""
    if isinstance(expr, Cond) and expr.field == MODALITY and expr.op == "eq":
        return expr.value
    if isinstance(expr, All):
        found = {only_modality(e) for e in expr.items} - {None}
        return found.pop() if len(found) == 1 else None
    return None


def with_modality(expr: Expr | None, modality: str | None) -> Expr | None:
    return _and([expr, cond(MODALITY, "eq", modality) if modality else None])


# ---------------------------------------------------------------------------- Milvus
# milvus-lite 2.5.1 has no NOT (any "not (...)" is "unsupported expr proto node") and no
# test of a JSON key's presence. So negations are pushed down to the leaves (De Morgan), and
# each stored payload carries TYPES_KEY: {field: type letter} for its non-null fields, which
# answers "exists" and the complement of a range ("not a number in range") with plain
# comparisons; a missing key compares unequal to everything, as the reference has it.
TYPES_KEY = "asif_t"


def type_tags(payload: dict[str, Any]) -> dict[str, str]:
    """The letter of each non-null field: n(umber), b(ool), d(ate text), s(tring), o(ther)."""
    out = {}
    for k, v in payload.items():
        if v is None or k.startswith(RESERVED_PREFIX):
            continue
        out[k] = ("b" if isinstance(v, bool) else "n" if isinstance(v, (int, float)) else
                  ("d" if instant(v) is not None else "s") if isinstance(v, str) else "o")
    return out


def _milvus_lit(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    # Values hold no control characters (checked up front), so the only JSON escapes left
    # are \" and \\, which Milvus' string grammar reads; other characters go as they are.
    return json.dumps(v, ensure_ascii=False)


def _milvus_leaf(c: Cond, neg: bool) -> str:
    f = "modality" if c.field == MODALITY else f'payload["{c.field}"]'
    tag = f'payload["{TYPES_KEY}"]["{c.field}"]'
    if c.op == "exists":
        return f'({tag} {"not in" if neg else "in"} ["n", "b", "d", "s", "o"])'
    op = c.op
    if neg:
        op = {"eq": "ne", "ne": "eq", "in": "nin", "nin": "in"}.get(op, op)
    if op in ("eq", "ne"):
        return f"({f} {'==' if op == 'eq' else '!='} {_milvus_lit(c.value)})"
    if op in ("in", "nin"):
        # one comparison per value: an IN list of mixed types trips a segcore assertion
        j, cmp = (" or ", "==") if op == "in" else (" and ", "!=")
        return "(" + j.join(f"{f} {cmp} {_milvus_lit(v)}" for v in c.value) + ")"
    sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
    letter, bound = "n", _milvus_lit(c.value)
    if c.kind == DATETIME:
        f, letter, bound = f'payload["{DATE_TWIN}{c.field}"]', "d", repr(c.seconds)
    if not neg:
        return f"({f} {sym} {bound})"
    flip = {"gt": "<=", "gte": "<", "lt": ">=", "lte": ">"}[op]
    return f'({tag} != "{letter}" or {f} {flip} {bound})'


def to_milvus(expr: Expr | None, neg: bool = False) -> str:
    """A Milvus boolean expression for a validated tree ('' for none), with no NOT. Field
    names are from FIELD_NAME's character set and values are JSON literals, so nothing in a
    filter can close a quote or a bracket; the caller parenthesises the result before its
    version fence."""
    if expr is None:
        return ""
    if isinstance(expr, Cond):
        return _milvus_leaf(expr, neg)
    if isinstance(expr, Not):
        return to_milvus(expr.item, not neg)
    conj = isinstance(expr, All) != neg  # De Morgan: a negated AND is an OR of negations
    return "(" + (" and " if conj else " or ").join(to_milvus(e, neg) for e in expr.items) + ")"


# ---------------------------------------------------------------------------- Qdrant
def to_qdrant(expr: Expr | None, m, key_of, *, edge: bool = False, bool_twin: str = ""):
    """A Qdrant ``Filter`` for a validated tree, built with the models module ``m`` of
    qdrant-client (``edge=False``) or qdrant-edge-py (``edge=True``; positional
    constructors). key_of maps a filter field to its payload key; bool_twin: the prefix of
    the keyword twin Qdrant Edge filters booleans on. None for no filter."""
    if expr is None:
        return None
    return _QdrantBuilder(m, key_of, edge, bool_twin).filter(expr)


class _QdrantBuilder:
    def __init__(self, m, key_of, edge: bool, bool_twin: str) -> None:
        self.m, self.key_of, self.edge, self.bool_twin = m, key_of, edge, bool_twin

    def _filter(self, must=None, should=None, must_not=None):
        m = self.m
        kw = {k: v for k, v in (("must", must), ("should", should), ("must_not", must_not)) if v}
        return m.Filter(**kw)

    def _match(self, key: str, value: Scalar):
        m = self.m
        if self.edge and isinstance(value, bool):
            return m.FieldCondition(self.bool_twin + key, match=m.MatchValue(
                "true" if value else "false"))
        if isinstance(value, float) and not value.is_integer():
            return self._range(key, gte=value, lte=value)
        if isinstance(value, float):
            # an integral float equals both 3 and 3.0 in the reference
            return self._filter(should=[self._match(key, int(value)),
                                        self._range(key, gte=value, lte=value)])
        if self.edge:
            return m.FieldCondition(key, match=m.MatchValue(value))
        return m.FieldCondition(key=key, match=m.MatchValue(value=value))

    def _eq(self, key: str, value: Scalar):
        """An int matches stored floats of the same value too (1 == 1.0 in the reference)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return self._filter(should=[self._match(key, value),
                                        self._range(key, gte=value, lte=value)])
        return self._match(key, value)

    def _range(self, key: str, **kw):
        m = self.m
        if self.edge:
            return m.FieldCondition(key, range=m.RangeFloat(**kw))
        return m.FieldCondition(key=key, range=m.Range(**kw))

    def _exists(self, key: str):
        m = self.m
        if self.edge:
            return self._filter(must_not=[m.IsEmptyCondition(key)])
        return self._filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key=key))])

    def leaf(self, c: Cond):
        key = self.key_of(c.field)
        if c.op == "exists":
            return self._exists(key)
        if c.op == "eq":
            return self._eq(key, c.value)
        if c.op == "ne":
            return self._filter(must_not=[self._eq(key, c.value)])
        if c.op in ("in", "nin"):
            alts = self._filter(should=[self._eq(key, v) for v in c.value])
            return alts if c.op == "in" else self._filter(must_not=[alts])
        if c.kind == DATETIME:
            return self._range(DATE_TWIN + key, **{c.op: c.seconds})
        return self._range(key, **{c.op: c.value})

    def filter(self, e: Expr):
        if isinstance(e, Cond):
            node = self.leaf(e)
            return node if isinstance(node, self.m.Filter) else self._filter(must=[node])
        if isinstance(e, All):
            return self._filter(must=[self.filter(x) for x in e.items])
        if isinstance(e, Any_):
            return self._filter(should=[self.filter(x) for x in e.items])
        return self._filter(must_not=[self.filter(e.item)])
