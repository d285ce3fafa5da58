"""Shared fixtures. Tests run on CPU with tiny data; the bundled Omniglot is imported once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.synthetic import make_omniglot_zip

# No test may send traffic beyond loopback: switch off the usage telemetry of MLflow, Ray and friends.
for _key, _value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_key, _value)


CI_ENV = "METADIST_CI"  # set by .ci/run: a test whose outside tool is missing fails there instead of skipping


def missing_tool(message: str, *, module: bool = False) -> None:
    """A tool a test needs (chromium, kubectl, unshare) is absent: skip here, fail in CI, where it must be present."""
    if os.environ.get(CI_ENV) == "1":
        pytest.fail(f"{CI_ENV}=1 and {message}", pytrace=False)
    pytest.skip(message, allow_module_level=module)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Bundled shard sets are imported into a per-session cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("metadist-cache")
    old = os.environ.get("METADIST_CACHE")
    os.environ["METADIST_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("METADIST_CACHE", None)
    else:
        os.environ["METADIST_CACHE"] = old


@pytest.fixture(scope="session")
def small1_uri(_private_cache) -> str:
    from metadist.data import ensure_bundled

    return ensure_bundled("omniglot-small1", progress=False)


@pytest.fixture(scope="session")
def small2_uri(_private_cache) -> str:
    from metadist.data import ensure_bundled

    return ensure_bundled("omniglot-small2", progress=False)


@pytest.fixture
def tiny_omniglot_zip(tmp_path) -> Path:
    return make_omniglot_zip(tmp_path / "images_background.zip", "images_background", {"Alpha": 3, "Beta": 4})
