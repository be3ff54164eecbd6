"""``python -m pipeline.engines.ray_cluster start ARGS...``: ``ray start`` for a node that stays on loopback.

Used by ``scripts/ray_local_cluster.sh`` to run a real two-node Ray cluster on one machine (head +
worker node, each its own raylet) for tests and for trying ``--address`` before a real cluster.

Why not plain ``ray start --node-ip-address=127.0.0.1``: Ray 2.60 replaces a loopback host, both
the node's own address and the ``--address`` of the head, by the machine's routable IP
(``ray._private.services.resolve_ip_for_localhost``), so the head advertises an address its
loopback-bound servers do not answer on and a second node cannot join. Ray's only switch that keeps
loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) also refuses to start a second node. This entry
point runs Ray's own ``ray`` command with that one function made the identity, and everything else
as Ray does it (token authentication included). Nothing else in dfpipe uses it.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    """Run ``ray ARGV`` with loopback hosts kept as they are."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # allow a second node
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray._private.services as services
        from ray.scripts.scripts import main as ray_main
    except ImportError:
        print("pipeline.engines.ray_cluster: ray is not installed: pip install 'dfpipe[dist]'", file=sys.stderr)
        return 1
    services.resolve_ip_for_localhost = lambda host: host
    sys.argv = ["ray", *argv]
    try:
        ray_main()
    except SystemExit as exc:  # click exits; pass its status on
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
