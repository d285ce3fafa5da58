"""Shared fixtures. Tests run on CPU with tiny data; the bundled Omniglot is imported once per session."""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from pathlib import Path

import pytest

from tests.browser import find_chrome
from tests.helpers import missing_tool, started_by
from tests.synthetic import make_omniglot_zip

# No test may send traffic beyond loopback: switch off the usage telemetry of MLflow, Ray and friends.
for _key, _value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_key, _value)


# -- markers for what a test starts ----------------------------------------------------------------------------------
# A test whose own body calls one of these starts what the marker says, so it must carry the marker (checked at
# collection). What fixtures start is declared on them (tests.helpers.starts) and passed on to their tests.
_STARTERS = {
    "browser": {"headless_chrome"},
    "server": {"_server", "run_mlflow_server", "Server", "ThreadingHTTPServer", "serve"},  # "serve": `metadist serve`
    "cluster": {"ray.init", "Cluster", "AutoscalingCluster", "DistributedTrainer", "_scenario"},
}


def _started_in_body(function) -> set[str]:
    """The names called in a test function's body (`f(...)`, `ray.init(...)`), and its string constants."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return set()
    names = set()
    for statement in tree.body[0].body:  # the body only: not its decorators or parameters
        for node in ast.walk(statement):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                names.update({name, name.rsplit(".", 1)[-1]})
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    return names


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config, items):
    """Give every test the markers of the fixtures it uses (declared with tests.helpers.starts), through any chain of
    fixtures; then refuse to run if a test's own body starts a server, cluster or browser without its marker."""
    unmarked = []
    bodies: dict[object, set[str]] = {}
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        fixture_defs = item._fixtureinfo.name2fixturedefs  # every fixture the test uses, directly or not
        for marker in sorted({m for defs in fixture_defs.values() for d in defs for m in started_by(d.func)}):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)
        function = item.function
        if function not in bodies:
            bodies[function] = _started_in_body(function)
        for marker, starters in _STARTERS.items():
            found = sorted(bodies[function] & starters)
            if found and item.get_closest_marker(marker) is None:
                unmarked.append(f"{item.nodeid} calls {', '.join(found)} but is not marked {marker}")
    if unmarked:
        raise pytest.UsageError("tests that start something without its marker (see starts() in tests/helpers.py):\n"
                                + "\n".join(unmarked))


# -- fixtures --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chrome() -> str:
    """The Chromium (or Chrome) binary; without one, skip (fail in CI)."""
    path = find_chrome()
    if path is None:
        missing_tool("no Chromium found (apt-get install chromium, or set $CHROME to a Chromium or Chrome binary)")
    return path


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
