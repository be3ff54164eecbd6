"""Layer 2, where per-video work runs: ``dispatch.run_items(worker_cls, args, items, engine=...)``
in-process, in a spawned process ``pool`` or on ``ray_actors``; what the engines share
(``common``); ``--shard I/N`` assignment and the shard-set check (``shards``); a loopback-only
``ray start`` (``python -m pipeline.engines.ray_cluster``).
"""
