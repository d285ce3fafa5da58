"""A Ray started in the test process, on loopback, with token authentication as Ray 2.60 has it by default: shared by
the modules that train on task workers (each holds one for the module, through its own fixture)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def auth_env() -> dict[str, str]:
    """Token authentication on, with the token in the environment instead of ~/.ray."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator:
    """metadist's own connection to a Ray it starts here with `num_cpus` slots; the environment restored after."""
    from metadist.config import DistributedConfig
    from metadist.distributed import connect

    saved = {k: os.environ.get(k) for k in AUTH_VARIABLES}
    os.environ.update(auth_env())
    connection = connect(DistributedConfig(workers=2), num_cpus=num_cpus)
    assert connection.started_here and connection.auth_mode == "token"
    try:
        yield connection
    finally:
        connection.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
