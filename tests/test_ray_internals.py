"""The private Ray internals metadist relies on (metadist/distributed/ray_internals.py) and the public names whose
arrival set the Ray version floor: if a Ray upgrade moves one, this fails, naming it, before any run does."""

from __future__ import annotations

import importlib.metadata
import re

import pytest

ray = pytest.importorskip("ray")


def _floor() -> tuple[int, ...]:
    requirement = next(r for r in importlib.metadata.requires("metadist") or [] if r.startswith("ray"))
    return tuple(int(p) for p in re.search(r">=([\d.]+)", requirement).group(1).split("."))


def test_the_installed_ray_meets_the_declared_floor():
    installed = tuple(int(p) for p in re.match(r"[\d.]+", ray.__version__).group(0).rstrip(".").split("."))
    assert installed >= _floor(), f"ray {ray.__version__} is below metadist's floor {_floor()}"


def test_public_names_metadist_imports_exist():
    from ray.exceptions import AuthenticationError, ObjectLostError, RayActorError, RayTaskError, RpcError  # noqa: F401
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: F401


def test_private_internals_are_where_metadist_expects_them():
    from ray._private import ray_constants, state
    from ray._raylet import AuthenticationTokenLoader, Config

    assert hasattr(ray_constants, "ENABLE_RAY_CLUSTER"), "ray._private.ray_constants.ENABLE_RAY_CLUSTER moved (loopback_only)"
    assert callable(getattr(Config, "initialize", None)), "ray._raylet.Config.initialize moved (reload_auth_settings)"
    assert callable(getattr(AuthenticationTokenLoader.instance(), "reset_cache", None)), "AuthenticationTokenLoader.reset_cache moved"
    assert callable(getattr(state.state, "get_max_resources_from_cluster_config", None)), (
        "ray._private.state.state.get_max_resources_from_cluster_config moved (autoscaler_max_resources)"
    )


def test_no_autoscaler_means_no_gpu_nodes_to_add():
    from metadist.distributed.ray_internals import autoscaler_max_resources

    assert autoscaler_max_resources() is None  # not connected to any cluster: no autoscaler configuration to read
