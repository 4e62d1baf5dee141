"""Fixtures and helpers of the Ray tests (test_distributed*.py): a local Ray, a Milvus Lite
gRPC server, drawn pictures, and comparisons of stored points."""

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")


@pytest.fixture(scope="module")
def local_ray():
    # Ray waits a fixed 30 s for its raylet (and for its GCS server's port file); on 2 cores
    # shared with another test worker that can run out (both seen in CI), so a start is tried
    # three times before it counts as failed
    for attempt in range(3):
        try:
            # logical CPUs beyond the 2 real ones: a distributed ingest holds an encode actor
            # per modality and a project actor while its read and write tasks run
            ray.init(num_cpus=6, include_dashboard=False, object_store_memory=100 * 2**20,
                     log_to_driver=False, configure_logging=False)
            break
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception here
            ray.shutdown()
            startup = ("timed out during startup", "Timed out waiting for file")
            if attempt == 2 or not any(m in str(exc) for m in startup):
                raise
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A captions table beside 120 distinct drawings, one corrupt file and one missing."""
    from tests.test_pipeline import COLORS, SHAPES, draw

    root = tmp_path_factory.mktemp("dist")
    (root / "img").mkdir()
    rows, n = ["image\tcaption"], 0
    for rep in range(10):
        for color in COLORS:
            for shape in SHAPES:
                draw(color, shape, 1000 + n).save(root / "img" / f"{n:03d}.png")
                rows.append(f"{n:03d}.png\ta {color} {shape} number {rep}")
                n += 1
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG broken")
    rows += ["corrupt.png\ta broken picture", "missing.png\ta picture that is not there"]
    (root / "captions.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture()
def milvus_server(tmp_path):
    pytest.importorskip("milvus_lite")
    from connectors.servers import MilvusLiteServer

    server = MilvusLiteServer(tmp_path / "srv.db").start()
    yield server
    server.kill()


def worker_pids(name):
    """PIDs of the Ray worker processes whose title names ``name`` (an actor's class)."""
    from pathlib import Path

    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if name.encode() in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:  # the process ended meanwhile
            pass
    return out


def assert_same(got, want):
    """Same points, vectors and raw embeddings; the same payloads (every item here has one
    source row per content, so no payload is a matter of write order)."""
    assert got.keys() == want.keys(), (len(got), len(want))
    for k, r in want.items():
        np.testing.assert_array_equal(got[k].sparse_indices, r.sparse_indices)
        # a model's output moves at float32 rounding (1e-7) with its batch's make-up, which
        # differs between the two pipelines; p = 8 multiplies that in the relative vector
        np.testing.assert_allclose(got[k].sparse_values, r.sparse_values, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got[k].embedding, r.embedding, rtol=1e-4, atol=1e-6)
        assert got[k].payload == r.payload and got[k].valid_from == r.valid_from
