"""Past one machine, on Ray (optional extra ``asif-index[ray]``): distributed ingestion
(:mod:`connectors.distributed.ingest`), anchors sharded across actors
(:mod:`connectors.distributed.sharded`) and anchor updates whose item pass runs on workers
(:mod:`connectors.distributed.updates`). Built on the core's engine, the ``Index`` and the
connectors' own update and ingestion stages."""


def connect(address: str | None = None):
    """The Ray module, joined to a cluster: the one this process already runs, else
    ``address`` (None: the cluster RAY_ADDRESS names, else a new local Ray)."""
    from asif_index._optional import require

    ray = require("ray", "running on Ray")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return ray
