"""Argument types and shared option groups: every value is checked by argparse (exit 2 with
one line naming the flag) before any work starts."""

from __future__ import annotations

import argparse
import math


def _int_at_least(text: str, lo: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if v < lo:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: give a number >= {lo}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of whole numbers >= 1 (e.g. '100,500')."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one number, e.g. 100,500")
    return [positive_int(x) for x in parts]


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a finite number > 0")
    return v


def positive_floats(text: str) -> list[float]:
    """A comma-separated list of finite numbers > 0 (e.g. '3,10,30')."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one number, e.g. 3,10")
    return [positive_float(x) for x in parts]


def unit_float(text: str) -> float:
    """A number in [0, 1] (a weight, a share, a fraction of an image)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a number from 0 to 1")
    return v


def open_unit_float(text: str) -> float:
    """A number strictly between 0 and 1 (a share that leaves something to the other part)."""
    v = unit_float(text)
    if v in (0, 1):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a number strictly "
                                         "between 0 and 1")
    return v


def unit_floats(text: str) -> list[float]:
    """A comma-separated list of numbers in [0, 1] (e.g. '0.45,0.3,0.2')."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one number from 0 to 1, e.g. 0.5,0.25")
    return [unit_float(x) for x in parts]


def anchor_ids(text: str) -> list[int]:
    """'17,42,100-103' -> [17, 42, 100, 101, 102, 103]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{part}' is not an anchor id: ids are whole numbers >= 0, e.g. --ids 17,42 or "
                "--ids 100-120 ('asif-index anchors status' shows the count)") from None
        if a < 0 or b < a:
            raise argparse.ArgumentTypeError(f"'{part}' is not a valid id or range (lo-hi, lo <= hi)")
        if b - a > 1_000_000:
            raise argparse.ArgumentTypeError(f"range '{part}' is too large")
        out.extend(range(a, b + 1))
    if not out:
        raise argparse.ArgumentTypeError("no anchor ids given (e.g. --ids 17,42)")
    return out


def kp_options(p: argparse.ArgumentParser, what: str = "") -> None:
    """--k/--p, offered only where they take effect (building anchors or an index)."""
    p.add_argument("--k", type=positive_int,
                   help=f"anchors kept per relative vector{what} (default 800)")
    p.add_argument("--p", type=positive_float,
                   help=f"power applied to the kept similarities{what} (default 8)")


def query_keep(text: str) -> int | str:
    """--query-keep: a number >= 1, or 'all' (the value sent as is, locally or to a service)."""
    if text == "all":
        return text
    return positive_int(text)


def query_lines(path_text: str):
    """The queries of ``search --queries FILE``: one per non-empty line, stripped."""
    from pathlib import Path

    from asif_index.errors import ConfigError

    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"queries file '{path}' (--queries) does not exist")
    return [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def explain_qbnorm(args):
    """explain's --qbnorm [T] / --no-qbnorm as Index.explain's qbnorm."""
    from asif_index.errors import ConfigError

    if args.no_qbnorm and args.qbnorm is not None:
        raise ConfigError("give --qbnorm or --no-qbnorm, not both")
    return False if args.no_qbnorm else args.qbnorm


def qbnorm_choice(args):
    """--qbnorm [T] / --no-qbnorm as Index.search's qbnorm (None: the index's default)."""
    from asif_index.errors import ConfigError

    if args.no_qbnorm and args.qbnorm is not None:
        raise ConfigError("give --qbnorm or --no-qbnorm, not both")
    if args.qbnorm is not None and (args.item or (args.text and args.image)):
        raise ConfigError("--qbnorm re-ranks one --text or one --image query (or --queries); "
                          "drop it for --item or a composed query")
    return False if args.no_qbnorm else args.qbnorm
