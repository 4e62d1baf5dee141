"""Past one machine, on Ray (optional extra ``asif-index[ray]``): anchors sharded across actors
(:mod:`connectors.distributed.sharded`). Built on the core's engine and the ``Index``; nothing
here reaches into a store."""
