#!/usr/bin/env bash
# The GPU check of issue 8 as one command, for a lent H100/H200 (its python3 has torch, Triton,
# numba, pytest and hypothesis; nothing to install). About 6 minutes:
#   bash benchmarks/gpu_check.sh                 # results in $OUT (device tool) or runs/bench
# 1. the CUDA tests (the fused kernel against the float64 reference on the GPU);
# 2. python -m benchmarks.topk --device cuda --sweep: the engine against torch fp32 / fp16 and the fp16
#    GEMM bound, N = 1e5, 1e6, 1e7 (where memory allows), d = 384, 768, batch 1..8192, with the
#    issue's targets printed as PASS / MISS lines; then the fused kernel's tile shapes at
#    N=1e6 d=768 (B=1 and 8192) and a per-kernel profile of one search (topk_gpu_tiles.json);
# 3. python -m benchmarks.select_kernels: each stage of one search timed alone, the fused
#    kernel's shapes and epilogues against cuBLAS's fp16 GEMM of the same shape.
# Then copy topk_gpu.json into docs/results/ and run python -m benchmarks.report.
set -o pipefail
OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
# test_real_embeddings needs the default encoders' weight packages (PyPI), not on the GPU image;
# it is a CPU test and runs in CI.
timeout "${TEST_TIMEOUT:-150}" "$PY" -m pytest -q -p no:cacheprovider -k "not real_embeddings" \
    tests/test_engine_kernels.py tests/test_topk_engine.py 2>&1 | tee "$OUT/cuda_tests.log"
timeout "${SELECT_TIMEOUT:-150}" "$PY" -m benchmarks.select_kernels \
    --out "$OUT/select_kernels.json" 2>&1 | tee "$OUT/select_kernels.log"
timeout "${TOPK_TIMEOUT:-270}" "$PY" -m benchmarks.topk --device cuda --sweep \
    --out "$OUT/topk_gpu.json" ${TOPK_ARGS:-} 2>&1 | tee "$OUT/topk_gpu.log"
# 4. the image encoder's throughput on the GPU (the ingestion cost model's per-GPU encode rate;
#    copy encode_rate.json to docs/results/encode_rate_gpu.json)
timeout "${ENCODE_TIMEOUT:-90}" "$PY" -m benchmarks.encode_rate --device cuda \
    --out "$OUT/encode_rate.json" 2>&1 | tee "$OUT/encode_rate.log"
