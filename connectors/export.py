"""A read-only export of an index's live items as a plain table for other tools.

One row per item visible at the live anchor version (superseded points and the index's own
bookkeeping left out): ``id`` (the item id search returns), ``modality``, ``payload`` (the
user's fields, as JSON text), ``indices`` / ``values`` (the relative vector: anchor ids and
weights, the fold entry left out), ``fold`` (c - T log Z, or null), ``embedding`` (the raw
unimodal embedding) and ``anchor_version``. Parquet (``.parquet``, needs pyarrow) or JSON
Lines (``.jsonl``); written to a temporary name and moved into place, then counted back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from asif_index.errors import ConfigError, ConsistencyError
from asif_index.methods.qbnorm_fold import FOLD_DIM

FORMATS = (".parquet", ".jsonl")


def export_rows(store, version: int) -> Iterator[dict[str, Any]]:
    for batch in store.scroll_items(version=version):
        for r in batch:
            keep = np.asarray(r.sparse_indices) != FOLD_DIM
            yield {"id": r.item, "modality": r.modality,
                   "payload": json.dumps(r.payload, ensure_ascii=False, sort_keys=True),
                   "indices": np.asarray(r.sparse_indices)[keep].astype(np.int64).tolist(),
                   "values": np.asarray(r.sparse_values, np.float32)[keep].tolist(),
                   "fold": None if r.fold is None else float(r.fold),
                   "embedding": np.asarray(r.embedding, np.float32).tolist(),
                   "anchor_version": int(version)}


def export_items(store, version: int, out: str | Path, batch: int = 4096) -> int:
    """Write the items visible at ``version`` to ``out`` -> rows written (read back)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"export '{out}': the file name ends in .parquet or .jsonl")
    if not out.parent.is_dir():
        raise ConfigError(f"export '{out}': folder '{out.parent}' does not exist")
    tmp = out.with_name(f".{out.name}.partial")
    n = 0
    if suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in export_rows(store, version):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        back = sum(1 for _ in open(tmp, encoding="utf-8"))
    else:
        from asif_index._optional import require

        pa = require("pyarrow", "Parquet export")
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.string()), ("modality", pa.string()),
                            ("payload", pa.string()), ("indices", pa.list_(pa.int64())),
                            ("values", pa.list_(pa.float32())), ("fold", pa.float64()),
                            ("embedding", pa.list_(pa.float32())),
                            ("anchor_version", pa.int64())])
        with pq.ParquetWriter(tmp, schema) as w:
            rows: list[dict] = []
            for row in export_rows(store, version):
                rows.append(row)
                if len(rows) >= batch:
                    w.write_table(pa.Table.from_pylist(rows, schema))
                    n += len(rows)
                    rows = []
            if rows or n == 0:
                w.write_table(pa.Table.from_pylist(rows, schema))
                n += len(rows)
        back = pq.ParquetFile(tmp).metadata.num_rows
    if back != n:  # never trust a write not read back
        tmp.unlink(missing_ok=True)
        raise ConsistencyError(f"export '{out}': wrote {n} rows but {back} read back")
    os.replace(tmp, out)
    return n


__all__ = ["FORMATS", "export_items", "export_rows"]
