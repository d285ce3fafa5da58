"""Every private Ray internal metadist touches, in one place, each with why no public API does the job.

A Ray upgrade that moves one of these fails tests/test_ray_internals.py loudly, instead of a run failing later.
"""

from __future__ import annotations

import os

SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds loopback only (its Windows/macOS default)


def reload_auth_settings() -> None:
    """Re-read RAY_AUTH_MODE and the token in this process. Why private: Ray reads both once, when it is imported
    (`ray._raylet.Config`, `AuthenticationTokenLoader`), and has no public call to read them again; a process that
    sets them later (a test, `connect` joining by address with a token at hand) would otherwise keep the old mode."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # compiled, no stubs
    except ImportError:  # a Ray before token authentication (< 2.52): nothing to refresh
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def loopback_only() -> None:
    """Every socket of a Ray started from this process on 127.0.0.1. Why private: Ray's single-machine mode is read
    from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER into `ray._private.ray_constants.ENABLE_RAY_CLUSTER` when Ray is
    imported; the environment variable reaches Ray's own child processes, the constant this process."""
    os.environ[SINGLE_MACHINE_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def autoscaler_max_resources() -> dict[str, float] | None:
    """The most of each resource the cluster's autoscaler could provide (its node types × their max counts), or None
    when no autoscaler has published its configuration. Why private: Ray publishes the node types an autoscaler
    advertises only through `ray._private.state.state.get_max_resources_from_cluster_config` (Ray Train v2 reads it
    the same way); there is no public API for it yet."""
    from ray._private import state

    getter = getattr(state.state, "get_max_resources_from_cluster_config", None)
    if getter is None:  # a Ray without it: treat as no autoscaler information
        return None
    try:
        found = getter()
    except Exception:  # noqa: BLE001 - no GCS entry, or an autoscaler of another version: no information
        return None
    return {k: float(v) for k, v in found.items()} if found else None
