"""A real MLflow tracking server on loopback, for the tracking tests.

`mlflow server` runs as a subprocess (uvicorn, one worker) over a sqlite store in a temporary folder, with
artifacts proxied through the server (`--serve-artifacts`), as a shared deployment would run it. Import the
session-scoped fixture into a test module:

    from tests.mlflow_server import mlflow_server  # noqa: F401  (pytest fixture)

    def test_x(mlflow_server):  # the server's http://127.0.0.1:<port> URI
        ...

Nothing here reaches beyond 127.0.0.1: telemetry is off in this process and in the server, proxies are bypassed
for loopback, and the server's job runner (which would start more processes) is disabled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import starts

# Set at import (test collection), before anything imports mlflow: MLflow reads some of these once, at import.
OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

STARTUP_TIMEOUT_S = 90.0  # a cold start (imports, sqlite schema migrations) takes ~5-10 s on a busy 2-core box
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port that nothing listens on at the moment of asking (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1.0) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def run_mlflow_server(root: Path) -> Iterator[str]:
    """Start `mlflow server` storing into `root`, yield its http URI once /health answers, then stop it."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, **OFFLINE_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        # Its own process group: `mlflow server` starts uvicorn as a child, and both must stop with it.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(uri):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}; log:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                log_tail = log_path.read_text()[-4000:]
                raise RuntimeError(f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s; log:\n{log_tail}")
            time.sleep(0.2)
        yield uri
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The uvicorn child may outlive its parent briefly; the group is ours alone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
@starts("server")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """The http URI of a real MLflow tracking server on loopback, shared by the session's tests."""
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
