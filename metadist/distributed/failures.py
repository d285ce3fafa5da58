"""What goes wrong in a distributed run and what is done about it, in one place.

- A task worker dies (killed, crashed, its node lost): `WorkerGroup.lost` replaces it (up to
  distributed.worker_restarts) and the step schedules hand its in-flight slices or steps to another worker;
  episodes are f(seed, step, task), so the recomputed work is the same work.
- An update object is lost with its node before the server read it (`ObjectLostError`): the step is recomputed,
  at most MAX_STEP_ATTEMPTS times in a row.
- The parameter server dies: `ParameterServerLost`, naming the checkpoint folder to resume from.
"""

from __future__ import annotations

from metadist.distributed.cluster import ClusterError

# A step whose update objects were lost with their node is recomputed; more losses than this in one step fail it.
MAX_STEP_ATTEMPTS = 5


class ParameterServerLost(ClusterError):
    """The parameter-server actor died; the run resumes from its last checkpoint with `metadist train --resume`."""


class UpdatesLost(ClusterError):
    """A step's updates were lost with their nodes MAX_STEP_ATTEMPTS times in a row."""
