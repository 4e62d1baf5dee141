"""Database servers for tests and the CLI: a milvus-lite gRPC server on loopback, and the
official Qdrant / Milvus containers through the ``docker`` SDK when an engine is reachable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from asif_index._optional import require
from asif_index.errors import BackendUnavailableError

QDRANT_IMAGE = "qdrant/qdrant:v1.15.1"
MILVUS_IMAGE = "milvusdb/milvus:v2.5.14"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BackendUnavailableError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


class MilvusLiteServer:
    """The milvus-lite 2.5 binary (the real Milvus C++ engine) serving gRPC on 127.0.0.1.

    ``kill()`` sends SIGKILL (a crash, not a shutdown); ``start()`` again reopens the same
    data file, as a restarted server would.
    """

    def __init__(self, db_file: str | Path, port: int | None = None) -> None:
        milvus_lite = require("milvus_lite", "the milvus-lite server")
        self.bin_dir = Path(milvus_lite.__file__).parent / "lib"
        self.db_file = Path(db_file).absolute()
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "MilvusLiteServer":
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = f"{self.bin_dir}:{env.get('LD_LIBRARY_PATH', '')}"
        self.proc = subprocess.Popen(
            [str(self.bin_dir / "milvus"), str(self.db_file), f"127.0.0.1:{self.port}", "ERROR"],
            env=env, cwd=str(self.db_file.parent), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
        except BackendUnavailableError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> "MilvusLiteServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def docker_client():
    """A docker SDK client, or :class:`BackendUnavailableError` saying why there is none."""
    docker = require("docker", "starting database containers")
    try:
        client = docker.from_env(timeout=5)
        client.ping()
        return client
    except Exception as exc:  # the SDK raises DockerException or requests errors
        raise BackendUnavailableError(f"no Docker engine is reachable ({exc})") from exc


def start_qdrant_container(port: int | None = None, name: str = "asif-qdrant"):
    """Run the official Qdrant image; returns (container, url)."""
    client = docker_client()
    port = port or free_port()
    c = client.containers.run(QDRANT_IMAGE, detach=True, remove=True, name=name,
                              ports={"6333/tcp": port})
    wait_for_port("127.0.0.1", port, 60)
    return c, f"http://127.0.0.1:{port}"


def start_milvus_container(port: int | None = None, name: str = "asif-milvus"):
    """Run the official Milvus standalone image (embedded etcd); returns (container, uri)."""
    client = docker_client()
    port = port or free_port()
    c = client.containers.run(
        MILVUS_IMAGE, command=["milvus", "run", "standalone"], detach=True, remove=True, name=name,
        ports={"19530/tcp": port},
        environment={"ETCD_USE_EMBED": "true", "COMMON_STORAGETYPE": "local",
                     "ETCD_DATA_DIR": "/var/lib/milvus/etcd"},
    )
    wait_for_port("127.0.0.1", port, 120)
    return c, f"http://127.0.0.1:{port}"
