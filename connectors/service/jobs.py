"""Long operations as jobs: ingest and anchor add / remove / rebuild, one at a time in a
worker thread, each persisted as a JSON file so that a job killed with the server resumes when
the server starts again (ingest and anchor additions from their checkpoint, a removal from
the update journal, which makes every step exact whichever run finishes it)."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

JobKind = Literal["ingest", "anchors_add", "anchors_remove", "anchors_rebuild"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class Skipped(BaseModel):
    input: str
    reason: str


class Job(BaseModel):
    id: str
    kind: JobKind
    params: dict[str, Any]
    state: JobState = "queued"
    done: int = Field(0, description="items (or source rows) processed")
    total: int | None = Field(None, description="items to process, when known")
    skipped: list[Skipped] = Field(default_factory=list)
    result: dict[str, Any] = Field(default_factory=dict, description="the final figures")
    error: str | None = None
    runs: int = Field(0, description="1, or more when it was resumed after a restart")
    created: float
    updated: float


class Cancelled(Exception):
    pass


class JobManager:
    """Queue, run and persist jobs.

    Args:
        directory: where job files and checkpoints live (one per index).
        run: ``run(job, report)`` performs a job; ``report(done=..., total=..., skipped=...)``
            updates its progress (and raises :class:`Cancelled` when it was cancelled).
    """

    def __init__(self, directory: str | Path, run: Callable[[Job, Callable[..., None]], dict]):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._run = run
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._cancel: set[str] = set()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        for f in sorted(self.dir.glob("job-*.json")):
            try:
                job = Job.model_validate_json(f.read_text())
            except ValueError:
                continue  # a file torn by a crash mid-write is never renamed into place
            self._jobs[job.id] = job

    # -- public -----------------------------------------------------------------------
    def start(self) -> list[str]:
        """Start the worker; jobs left queued or running by a previous server are resumed
        first, oldest first. Returns their ids."""
        resumed = sorted((j for j in self._jobs.values() if j.state in ("queued", "running")),
                         key=lambda j: j.created)
        for j in resumed:
            j.state = "queued"
            self._save(j)
            self._queue.put(j.id)
        self._thread = threading.Thread(target=self._worker, name="asif-jobs", daemon=True)
        self._thread.start()
        return [j.id for j in resumed]

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        if self._thread:
            self._thread.join(timeout)

    def submit(self, kind: JobKind, params: dict[str, Any]) -> Job:
        now = time.time()
        job = Job(id=uuid.uuid4().hex[:16], kind=kind, params=params, created=now, updated=now)
        with self._lock:
            self._jobs[job.id] = job
            self._save(job)
        self._queue.put(job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            j = self._jobs.get(job_id)
            return j.model_copy(deep=True) if j else None

    def list(self) -> list[Job]:
        with self._lock:
            return sorted((j.model_copy(deep=True) for j in self._jobs.values()),
                          key=lambda j: -j.created)

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            j = self._jobs.get(job_id)
            if j is None:
                return None
            if j.state == "queued":
                j.state = "cancelled"
                self._save(j)
            elif j.state == "running":
                self._cancel.add(job_id)  # stops at its next batch boundary
            return j.model_copy(deep=True)

    def checkpoint(self, job: Job) -> Path:
        return self.dir / f"job-{job.id}.ckpt"

    @property
    def active(self) -> int:
        with self._lock:
            return sum(j.state in ("queued", "running") for j in self._jobs.values())

    # -- internals --------------------------------------------------------------------
    def _save(self, job: Job) -> None:
        job.updated = time.time()
        f = self.dir / f"job-{job.id}.json"
        tmp = f.with_suffix(".tmp")
        tmp.write_text(job.model_dump_json())
        tmp.replace(f)  # atomic: a kill leaves the old or the new file

    def _worker(self) -> None:
        while (job_id := self._queue.get()) is not None:
            with self._lock:
                job = self._jobs[job_id]
                if job.state != "queued":
                    continue
                job.state, job.error = "running", None
                job.runs += 1
                self._save(job)
            last = [0.0]

            def report(done: int | None = None, total: int | None = None,
                       skipped: list[tuple[str, str]] | None = None, job=job) -> None:
                with self._lock:
                    if done is not None:
                        job.done = done
                    if total is not None:
                        job.total = total
                    if skipped is not None:
                        job.skipped = [Skipped(input=k, reason=r) for k, r in skipped[:1000]]
                    if time.monotonic() - last[0] > 0.5:
                        self._save(job)
                        last[0] = time.monotonic()
                    if job.id in self._cancel:
                        raise Cancelled(f"job {job.id} was cancelled")

            try:
                result = self._run(job, report)
                state, error = "done", None
            except Cancelled as exc:
                result, state, error = {}, "cancelled", str(exc)
            except Exception as exc:  # noqa: BLE001 - a job's failure is its state, not the server's
                result, state, error = {}, "failed", f"{type(exc).__name__}: {exc}"
            with self._lock:
                job.state, job.error = state, error
                job.result.update(result)
                self._cancel.discard(job.id)
                self._save(job)
