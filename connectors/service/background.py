"""The service on a loopback port in a background thread: for examples, tests and benchmarks
that need a real HTTP server beside their own code."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread; yields its base URL; stops it (and its job
    worker) on exit."""
    import uvicorn

    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    thread = threading.Thread(target=server.run, name="asif-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        jobs = getattr(app.state, "jobs", None)
        if jobs is not None:
            jobs.stop()
        wait_idle = getattr(app.state, "wait_idle", None)
        if wait_idle is not None:
            wait_idle()
