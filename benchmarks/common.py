"""Shared helpers: timing, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def best_time(fn: Callable[[], object], repeat: int = 3, min_time: float = 0.0) -> float:
    """Best wall time of ``repeat`` runs after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def flickr_anchors(data_dir, img_enc, txt_enc):
    """Flickr8k embedded through the encoders' cache.

    Returns (train rows, dev rows, anchor image embeddings [30000, d_i] (each caption's
    image), anchor caption embeddings [30000, d_t], anchor payloads)."""
    from asif_index.anchors import AnchorPayload
    from asif_index.datasets import flickr8k

    train, dev = flickr8k(data_dir / "flickr8k")
    tr_imgs = sorted({r.image for r in train})
    emb_i = dict(zip(tr_imgs, img_enc.encode(tr_imgs)))
    a_img = np.stack([emb_i[r.image] for r in train])
    a_txt = txt_enc.encode([r.caption for r in train])
    payloads = [AnchorPayload(r.caption, r.image.name, "flickr8k-train") for r in train]
    return train, dev, a_img, a_txt, payloads


def flickr_bench_setup(image_encoder: str | None = None):
    """(image encoder, text encoder, train, dev, anchor image emb, anchor caption emb,
    anchor payloads) for the Flickr8k benchmarks, or None (with a message) without data.
    image_encoder: a spec (asif_index.encoders.registry; None: the settings' default)."""
    from asif_index.config import AsifSettings
    from asif_index.datasets import shared_data_dir

    data = shared_data_dir()
    if data is None:
        print("no ../shared/data: nothing to measure")
        return None
    img_enc, txt_enc = AsifSettings.load(image_encoder=image_encoder).encoders()
    return (img_enc, txt_enc, *flickr_anchors(data, img_enc, txt_enc))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(obj: dict, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1))
    return p


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)
