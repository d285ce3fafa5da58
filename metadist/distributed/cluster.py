"""Joining or starting the Ray cluster a distributed job runs on.

Where the job runs (`connect`): `distributed.address`, else $RAY_ADDRESS, else a Ray started in this process on
loopback (no dashboard). `_node_ip_address` alone still leaves the GCS, raylet and agents listening on every
interface; Ray keeps all of them on 127.0.0.1 only in its single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
read when Ray is imported), which `loopback_only` switches on for a cluster started here. A process that is
already connected (a test's cluster, a `ray job submit` entry point) is used as it is and left running.

Token authentication: see metadist.distributed.auth; `connect` turns token mode on when joining by address with a
token at hand.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import ray
from ray.exceptions import AuthenticationError

from metadist.config import DistributedConfig
from metadist.distributed.auth import AUTH_MODE_ENV, AUTH_TOKEN_ENV, auth_mode, refresh_auth_settings, token_available
from metadist.distributed.ray_internals import loopback_only
from metadist.errors import MetadistError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Passed to every worker process of a cluster this process starts or joins, when set here: the cache that
# bundled:// shard sets are imported into (tests point it at a private folder).
FORWARDED_ENV = ("METADIST_CACHE",)


class ClusterError(MetadistError):
    """The Ray cluster could not be reached, or cannot hold the workers asked for."""


@dataclass(frozen=True)
class Connection:
    address: str  # the GCS address, or "local" for a Ray started here
    started_here: bool  # this process started Ray, and shuts it down when the job ends
    auth_mode: str  # "token", "disabled", or "default" (RAY_AUTH_MODE unset)

    def close(self) -> None:
        if self.started_here and ray.is_initialized():
            ray.shutdown()


def ray_address(config: DistributedConfig) -> str | None:
    return config.address or os.environ.get("RAY_ADDRESS") or None


# Ray retries a dead GCS for minutes before it gives up; a plain TCP connect says as much in seconds.
REACH_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail at once, naming the address, when nothing listens at HOST:PORT (Ray itself would retry for minutes).
    'auto' and ray:// client addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"distributed.address {address!r}: expected HOST:PORT (the head's GCS, port 6379 by default) or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, REACH_TIMEOUT_S)):
            pass
    except OSError as exc:
        raise ClusterError(
            f"distributed.address {address!r}: nothing answers there ({exc.strerror or exc}); is the head node up "
            f"(`ray start --head` prints its address)?"
        ) from exc


def connect(config: DistributedConfig, *, num_cpus: int | None = None) -> Connection:
    """Join the configured cluster, or start a local one; reuse the connection this process already has."""
    if ray.is_initialized():
        return Connection(address=ray.get_runtime_context().gcs_address, started_here=False, auth_mode=auth_mode())
    address = ray_address(config)
    if address is not None and os.environ.get(AUTH_MODE_ENV) is None and token_available():
        # Ray turns token mode on by itself only for a cluster it finds without an address.
        os.environ[AUTH_MODE_ENV] = "token"
    refresh_auth_settings()
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    if address is None:
        loopback_only()
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,  # a one-machine cluster listens on loopback only
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
        )
        log.info("started a local Ray (%s auth) with %s", auth_mode(), ray.cluster_resources())
        return Connection(address="local", started_here=True, auth_mode=auth_mode())
    check_reachable(address, config.start_timeout_s)
    try:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    except RuntimeError as exc:  # Ray's "Failed to connect to GCS", after retrying for a while
        refused = "Unauthenticated" in str(exc) or "InvalidAuthToken" in str(exc)
        raise ClusterError(
            f"distributed.address {address!r}: "
            + (f"the cluster refused this process's authentication token; get it with `ray get-auth-token` on the "
               f"head node and put it in ~/.ray/auth_token or ${AUTH_TOKEN_ENV} (and {AUTH_MODE_ENV}=token)"
               if refused else f"cannot join the Ray cluster: {str(exc).splitlines()[0]}")
        ) from exc
    except ConnectionError as exc:
        raise ClusterError(
            f"distributed.address {address!r}: cannot join the Ray cluster ({exc}). If it runs with token "
            f"authentication, this process needs its token (`ray get-auth-token` on the head node prints it) in "
            f"~/.ray/auth_token or ${AUTH_TOKEN_ENV}, with {AUTH_MODE_ENV}=token (set for you when a token is there)"
        ) from exc
    except AuthenticationError as exc:
        raise ClusterError(
            f"distributed.address {address!r}: the cluster refused this process's token ({exc}); get the "
            f"cluster's token with `ray get-auth-token` on its head node and put it in ~/.ray/auth_token or "
            f"${AUTH_TOKEN_ENV}"
        ) from exc
    log.info("joined the Ray cluster at %s (%s auth): %s", address, auth_mode(), ray.cluster_resources())
    return Connection(address=address, started_here=False, auth_mode=auth_mode())
