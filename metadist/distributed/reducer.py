"""Reducer actors: the first level of the sum of a step's slice updates, near where they are made.

Each reducer owns a fixed, contiguous group of the step's slices (metadist.distributed.flat.group_bounds) and sums
their updates in slice order; the parameter server sums the reducers' partial sums in group order. The grouping
depends only on the slice count and `distributed.reducers`, never on which worker computed a slice, so a
synchronous run gives the same bits at any worker count and through failures. The server takes in one buffer per
reducer per step, whatever the number of workers; by default there is one reducer per node, placed on it, so most
slice updates reach their reducer without crossing the network.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from metadist.distributed.flat import FlatUpdate, sum_in_order


class Reducer:
    def sum(self, *parts: FlatUpdate) -> FlatUpdate:
        return sum_in_order(parts)


def start_reducers(count: int | None) -> tuple[list[Any], list[str]]:
    """`count` reducer actors (None: one per alive node), spread over the nodes; their handles and node ids."""
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    count = count or max(1, len(nodes))
    reducer_class: Any = ray.remote(Reducer)
    handles, placed = [], []
    for r in range(count):
        node = nodes[r % len(nodes)]
        handles.append(reducer_class.options(
            num_cpus=0, max_restarts=-1,  # stateless: Ray restarts a lost one and the driver resubmits its sum
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
        ).remote())
        placed.append(node)
    return handles, placed
