"""Joining or starting the Ray cluster a distributed job runs on, and what each worker reserves in it.

Where the job runs (`connect`): `distributed.address`, else $RAY_ADDRESS, else a Ray started in this process on
loopback (no dashboard). `_node_ip_address` alone still leaves the GCS, raylet and agents listening on every
interface; Ray keeps all of them on 127.0.0.1 only in its single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
read when Ray is imported), which `loopback_only` switches on for a cluster started here. A process that is
already connected (a test's cluster, a `ray job submit` entry point) is used as it is and left running.

Token authentication (Ray ≥ 2.59 turns it on for a local `ray.init()`): a Ray started here generates a token into
~/.ray/auth_token, or uses $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH, and its workers inherit the mode. Joining a
cluster by an explicit address, Ray switches token mode on only when RAY_AUTH_MODE=token is set; when it is unset
and a token is at hand (the variables above or ~/.ray/auth_token), `connect` sets it, so `--address` works against
a cluster started with RAY_AUTH_MODE=token without more flags. RAY_AUTH_MODE=disabled is respected as given.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import AuthenticationError

from metadist.config import DistributedConfig, TrainConfig
from metadist.errors import MetadistError

log = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds loopback only (its Windows/macOS default)
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


def resolve_address(config: DistributedConfig) -> str | None:
    return config.address or os.environ.get("RAY_ADDRESS") or None


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"  # where Ray writes and looks for its token


def token_available() -> bool:
    return bool(os.environ.get(AUTH_TOKEN_ENV) or os.environ.get(AUTH_TOKEN_PATH_ENV) or default_token_path().is_file())


def connect(config: DistributedConfig, *, num_cpus: int | None = None) -> Connection:
    """Join the configured cluster, or start a local one; reuse the connection this process already has."""
    if ray.is_initialized():
        return Connection(address=ray.get_runtime_context().gcs_address, started_here=False, auth_mode=_auth_mode())
    address = resolve_address(config)
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
        log.info("started a local Ray (%s auth) with %s", _auth_mode(), ray.cluster_resources())
        return Connection(address="local", started_here=True, auth_mode=_auth_mode())
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
    log.info("joined the Ray cluster at %s (%s auth): %s", address, _auth_mode(), ray.cluster_resources())
    return Connection(address=address, started_here=False, auth_mode=_auth_mode())


def refresh_auth_settings() -> None:
    """Make this process's Ray see RAY_AUTH_MODE and the token as the environment has them now: Ray reads both
    when it is imported, and a mode or token set later (here, by a test, by `connect`) would otherwise be ignored
    by this process while the cluster's processes, started fresh, honour it."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray before token authentication (< 2.52): nothing to refresh
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def loopback_only() -> None:
    """Every socket of a Ray started from this process on 127.0.0.1: Ray's single-machine mode, set in the
    environment (for Ray's own child processes) and in the constant this process read when it imported Ray."""
    os.environ[SINGLE_MACHINE_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _auth_mode() -> str:
    return "token" if os.environ.get(AUTH_MODE_ENV, "").lower() == "token" else os.environ.get(AUTH_MODE_ENV, "default")


@dataclass(frozen=True)
class WorkerResources:
    """What one task worker reserves: its Ray resources and the torch threads it runs with."""

    num_cpus: float
    num_gpus: float
    threads: int

    def as_options(self) -> dict:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def worker_resources(config: DistributedConfig, train: TrainConfig) -> WorkerResources:
    """`gpus_per_worker` None = one GPU each when the cluster has any (and the job may use CUDA), else none."""
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 and train.device != "cpu" else 0.0
    cpus = config.cpus_per_worker or float(train.threads or 1)
    threads = train.threads or max(1, int(cpus))
    return WorkerResources(num_cpus=cpus, num_gpus=gpus, threads=threads)
