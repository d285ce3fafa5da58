"""`ray start` for one more node of a one-machine Ray cluster kept on loopback (used by local-cluster.sh).

    python cluster/loopback_node.py start --address 127.0.0.1:6379 --num-cpus 2 --block ...   # `ray start`'s flags

In Ray's single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) every node's address is 127.0.0.1 and every
socket binds loopback, but `ray start --address` refuses to add a node ("Multi-node Ray clusters are not supported
on Windows and OSX", ray/scripts/scripts.py, `start`). Switching the mode off is no way round: then Ray replaces
127.0.0.1 by the machine's outward address, for the node and for the head it joins (`resolve_ip_for_localhost` in
ray/_private/services.py), and the node listens on every interface. Here `ray start` runs unchanged except that
the one check it makes before adding a node sees clusters as enabled; the rest of Ray, and every process the node
starts, stays in single-machine mode. (`ray.cluster_utils.Cluster` adds loopback nodes the same way, in-process.)
"""

from __future__ import annotations

import sys
import types

import ray._private.ray_constants as ray_constants
import ray.scripts.scripts as ray_scripts


class _ClustersEnabled(types.ModuleType):
    """ray_constants as `ray start` sees it: the same values, but clusters enabled."""

    ENABLE_RAY_CLUSTER = True

    def __getattr__(self, name: str):
        return getattr(ray_constants, name)


if __name__ == "__main__":
    if ray_constants.ENABLE_RAY_CLUSTER:
        sys.exit("loopback_node.py: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (single-machine mode); "
                 "without it, use `ray start` itself")
    ray_scripts.ray_constants = _ClustersEnabled("ray_constants")
    sys.argv[0] = "ray"
    sys.exit(ray_scripts.main())
