"""Distributed anchor updates: the item pass of ``connectors.updates`` split over Ray tasks.

An update's expensive step is the pass over the stored items (find those whose top-k the new
or removed anchors change; re-project them). :class:`RayItemPass` splits the point ids into
``workers`` disjoint ranges (:func:`connectors.base.id_ranges`) and runs
:func:`connectors.updates.pass_items` on each range in a Ray task that opens the database
itself, so the scroll, the re-projection and the writes all run in parallel. Everything else
stays with the driver, in ``update_anchors``: the updater lease, the journal and its
heartbeat (beaten while the tasks run), the new anchors, and the live-version switch, one
write at the end.

Failures converge because every write is deterministic (point ids from item and version):
a killed worker's task is retried by Ray and rewrites the same points; a killed driver
leaves the journal, and re-running the update (``Index.resume_update`` or any update call,
with or without Ray) finishes it once the dead driver's heartbeat has lapsed.

Workers open the database, so the index must be on a server (``--url``): an embedded
database admits one process.
"""

from __future__ import annotations

from typing import Any, Callable

from asif_index._optional import require
from asif_index.errors import ConfigError
from connectors.distributed.errors import asif_error_of
from connectors.updates import ItemPassPlan


def _range_pass(settings: dict, physical: str, plan: ItemPassPlan, batch: int,
                id_range) -> tuple[int, int]:
    """A Ray task: one id range of the item pass, on its own database connection."""
    from asif_index.config import AsifSettings
    from connectors import open_store
    from connectors.updates import pass_items

    store = open_store(AsifSettings(**settings), physical, resolve=False, must_exist=True)
    try:
        return pass_items(store, plan, batch, id_range)
    finally:
        store.close()


class RayItemPass:
    """An ``item_pass`` for :func:`connectors.updates.update_anchors` (and the ``Index``
    update methods) that runs on Ray: ``workers`` tasks, one id range each.

    settings: the ``AsifSettings`` of the index (a server URL); physical: the index's
    physical name (``index.store.name``; an alias resolves before the update starts);
    task_options: passed to ``ray.remote`` (e.g. ``{"num_cpus": 2}``)."""

    def __init__(self, settings, physical: str, workers: int = 4, batch: int = 512,
                 task_options: dict[str, Any] | None = None) -> None:
        ray = require("ray", "distributed anchor updates")
        if not settings.url:
            raise ConfigError("a distributed anchor update needs the index on a server "
                              "(--url): every worker opens the database, and an embedded "
                              "one admits a single process")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1; got {workers}")
        if not ray.is_initialized():
            raise ConfigError("Ray is not running here: call ray.init() (or ray.init(address="
                              "...) for a cluster) first")
        self.settings = settings.model_dump(mode="json")
        self.physical, self.workers, self.batch = physical, workers, batch
        # a killed worker's range is re-run: its writes are idempotent
        self.task = ray.remote(**{"max_retries": 5, "num_cpus": 1,
                                  **(task_options or {})})(_range_pass)
        self.last: list[tuple[int, int]] = []  # (scanned, touched) per range of the last run

    def __call__(self, plan: ItemPassPlan, heartbeat: Callable[[], None]) -> tuple[int, int]:
        import ray

        from connectors.base import id_ranges

        ref = ray.put(plan)
        tasks = [self.task.remote(self.settings, self.physical, ref, self.batch, r)
                 for r in id_ranges(self.workers)]
        pending = list(tasks)
        while pending:
            # the driver keeps the journal alive while the workers run
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=5.0)
            heartbeat()
        try:
            self.last = ray.get(tasks)
        except Exception as exc:  # a range failed for good: its asif error, if it was one
            raise asif_error_of(exc) from exc
        return sum(s for s, _ in self.last), sum(t for _, t in self.last)


__all__ = ["RayItemPass"]
