"""Image encoder throughput on a device: the per-GPU encode rate of the ingestion cost model.

    python -m benchmarks.encode_rate [--device cuda] [--batch 256] [--seconds 10]
        [--out runs/bench/encode_rate.json]

The default image encoder's architecture (timm ``efficientnet_lite0``; fp16 on a GPU, as the
encoder runs there) on synthetic 224x224 inputs: throughput does not depend on the weights,
so random ones serve where the weights package is not installed (the GPU machine). Two
figures: the model alone on batches already on the device (the GPU's ceiling), and the
encoder's own path from decoded uint8 images (resize, normalise, upload, forward) with its
decode threads, which is what an encode actor does per block.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine, table, write_json


def measure(device: str, batch: int, seconds: float) -> list[dict]:
    import torch

    from asif_index.encoders.image import TimmImageEncoder

    enc = TimmImageEncoder("efficientnet_lite0", None, name="efficientnet_lite0 (random)",
                           device=device, batch_size=batch)
    dtype = torch.float16 if enc.device.type == "cuda" else torch.float32
    x = torch.randn(batch, 3, enc.image_size, enc.image_size, device=enc.device, dtype=dtype)
    rows = []

    def sync():
        if enc.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(3):
            enc.model(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            enc.model(x)
            n += batch
        sync()
        dt = time.perf_counter() - t0
    rows.append({"path": "model alone, batch on the device", "device": str(enc.device),
                 "batch": batch, "images_per_s": n / dt})
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(2 * batch)]
    enc.encode(imgs[:batch])  # warm
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        enc.encode(imgs)
        n += len(imgs)
    dt = time.perf_counter() - t0
    rows.append({"path": "encoder from decoded 256x256 uint8 (resize, normalise, forward)",
                 "device": str(enc.device), "batch": batch, "images_per_s": n / dt,
                 "decode_workers": enc.decode_workers})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default="runs/bench/encode_rate.json")
    a = ap.parse_args()
    rows = measure(a.device, a.batch, a.seconds)
    md = table(rows, ["path", "device", "batch", "images_per_s"])
    print(md)
    write_json({"question": "image encoder throughput on a device", "machine": machine(),
                "rows": rows, "markdown": md}, a.out)


if __name__ == "__main__":
    main()
