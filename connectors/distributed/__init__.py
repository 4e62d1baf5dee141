"""Past one machine, on Ray (optional extra ``asif-index[ray]``): distributed ingestion
(:mod:`connectors.distributed.ingest`), anchors sharded across actors
(:mod:`connectors.distributed.sharded`) and anchor updates whose item pass runs on workers
(:mod:`connectors.distributed.updates`). Built on the core's engine, the ``Index`` and the
connectors' own update and ingestion stages."""
