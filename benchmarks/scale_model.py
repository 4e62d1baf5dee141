"""A cost model for sizes this machine cannot hold, from measured parts: the rows of
``benchmarks.scale`` runs at two or more sizes, each latency fitted as ``p50 = a * N^b`` per
(engine, recipe, direction) on a log-log least-squares line, disk as the largest run's bytes
per item times N, and the write time at the measured items per second.

    python -m benchmarks.scale_model docs/results/scale_search.json

Only sizes the runs measured go into a fit, and each prediction names them, so nobody reads
an extrapolation as a measurement. Latencies fitted: the variants every row shares
(``exact`` and ``exact_plain``: one exact sparse stage with and without the fold; ``dense``:
the 384-d HNSW peer); ``default`` and ``plain`` only where every fitted row ran the same
stages (the same candidate vector).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import machine, table, write_json

VARIANTS = ("exact", "exact_plain", "dense", "default", "plain")
SIZES = (10**6, 10**7, 10**8)


def _col(n: int) -> str:
    return f"at_{n:.0e}".replace("+0", "").replace("+", "")


def fit(ns, ys) -> tuple[float, float]:
    """(a, b) of y = a * n^b, least squares in log-log space (>= 2 distinct sizes)."""
    ln, ly = np.log(np.asarray(ns, float)), np.log(np.asarray(ys, float))
    b, la = np.polyfit(ln, ly, 1)
    return float(np.exp(la)), float(b)


def model(rows: list[dict], sizes=SIZES) -> list[dict]:
    """Per (engine, recipe, direction): each variant's p50 (ms) fitted on >= 2 measured sizes,
    then disk (GB, the largest run's bytes per item) and build time (hours, its rates), each
    at ``sizes``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["engine"], r["recipe"], r["direction"]), []).append(r)
    out = []
    for (engine, recipe, direction), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["items"])
        for v in VARIANTS:
            pts = [(r["items"], r[f"{v}_p50_ms"]) for r in rs if r.get(f"{v}_p50_ms")]
            if v in ("default", "plain") and len({r.get("candidate_keep") or 0 for r in rs}) > 1:
                continue  # different first stages: one line through them would mean nothing
            if len({n for n, _ in pts}) < 2:
                continue
            a, b = fit(*zip(*pts))
            row = {"engine": engine, "recipe": recipe, "direction": direction,
                   "quantity": f"{v} p50", "unit": "ms",
                   "fitted_on": ",".join(str(n) for n, _ in pts), "exponent": b}
            row.update({_col(n): a * n**b for n in sizes})
            out.append(row)
        big = rs[-1]
        if big.get("bytes_per_item"):
            row = {"engine": engine, "recipe": recipe, "direction": direction,
                   "quantity": "disk", "unit": "GB", "fitted_on": str(big["items"])}
            row.update({_col(n): big["bytes_per_item"] * n / 1e9
                        for n in sizes})
            out.append(row)
        rate = [r for r in rs if r.get("write_items_s") and r.get("project_items_s")]
        if rate:
            r = rate[-1]
            per_item = 1 / r["project_items_s"] + 1 / r["write_items_s"] + \
                (1 / r["fold_items_s"] if r.get("fold_items_s") else 0.0)
            row = {"engine": engine, "recipe": recipe, "direction": direction,
                   "quantity": "project + fold + write", "unit": "hours",
                   "fitted_on": str(r["items"])}
            row.update({_col(n): per_item * n / 3600
                        for n in sizes})
            out.append(row)
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="benchmarks.scale JSON results")
    ap.add_argument("--out", default="runs/bench/scale_model.json")
    a = ap.parse_args(argv)
    rows = []
    for p in a.runs:
        try:
            rows += json.loads(Path(p).read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{p}: not a benchmarks.scale result ({type(exc).__name__}: "
                             f"{exc}); give the JSON files its --out wrote") from None
    out = model(rows)
    if not out:
        raise SystemExit("no (engine, recipe, direction) was measured at two sizes in "
                         f"{', '.join(a.runs)}; run benchmarks.scale at another --items")
    cols = ["engine", "recipe", "direction", "quantity", "unit", "fitted_on", "exponent",
            *(_col(n) for n in SIZES)]
    md = table(out, cols)
    print(md)
    write_json({"machine": machine(), "config": {"runs": a.runs}, "rows": out, "markdown": md},
               a.out)
    return md


if __name__ == "__main__":
    main()
