"""Prometheus text exposition of request counts and latencies (no client library needed)."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            h = self.hist[route]
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-1] += 1
            self.sums[route] += seconds

    def render(self) -> str:
        out = ["# HELP asif_requests_total HTTP requests by method, route and status.",
               "# TYPE asif_requests_total counter"]
        with self._lock:
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f'asif_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}')
            out += ["# HELP asif_request_seconds Request latency by route.",
                    "# TYPE asif_request_seconds histogram"]
            for r, h in sorted(self.hist.items()):
                for b, n in zip(BUCKETS, h):
                    out.append(f'asif_request_seconds_bucket{{route="{r}",le="{b}"}} {n}')
                out.append(f'asif_request_seconds_bucket{{route="{r}",le="+Inf"}} {h[-1]}')
                out.append(f'asif_request_seconds_sum{{route="{r}"}} {self.sums[r]:.6f}')
                out.append(f'asif_request_seconds_count{{route="{r}"}} {h[-1]}')
            for name, v in sorted(self.gauges.items()):
                out += [f"# TYPE {name} gauge", f"{name} {v}"]
        return "\n".join(out) + "\n"
