"""Running a metadist job on a Ray cluster through the cluster's job server (Ray Jobs, `JobSubmissionClient`).

`metadist submit JOB.yaml` is `ray job submit --working-dir DIR -- metadist train JOB.yaml --no-progress ...` with
the checks a person wants before waiting for a cluster: the job and its `--set` overrides are validated here, the
job file must lie in the working directory that is uploaded (and not be excluded from it), and settings that would
leave the run's checkpoints or MLflow store in the job's temporary working directory are warned about.

What the job runs in (`prepare_submission`): the working directory, uploaded by Ray (it honours .gitignore and
.rayignore, and `WORKING_DIR_EXCLUDES` here keeps virtualenvs, outputs and local MLflow stores out), becomes the
job's current directory and is put on its PYTHONPATH; `env_vars` carries $MLFLOW_TRACKING_URI when set and the
`--env` pairs; `pip` installs extra packages into a virtualenv of the job's own. The `metadist` command itself must
be installed on the cluster's nodes (cluster/ sets that up).

Where the job server is (`resolve_address`): `--address`, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else
http://127.0.0.1:8265 (the dashboard port on the head; `ray dashboard cluster.yaml` forwards it over SSH). Ray's
client lets those variables override an explicit address; here the explicit address wins.

Token authentication: the job server of a cluster started with RAY_AUTH_MODE=token wants `Authorization: Bearer
<token>` on every request. Ray's client adds it (`get_auth_headers_if_auth_enabled` in
ray/_private/authentication/http_token_authentication.py), once, when it is built, and only if this process runs in
token mode, which for an explicit address means RAY_AUTH_MODE=token; as `cluster.connect` does, the mode is switched
on when it is unset and a token is at hand ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), here only
while the client is built. A refused or missing token (HTTP 403/401, raised by Ray as `AuthenticationError`) and an
unreachable server are `SubmissionError`s that say what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ray.exceptions import AuthenticationError, RpcError

from metadist.config import JobConfig
from metadist.distributed.cluster import AUTH_MODE_ENV, AUTH_TOKEN_ENV, refresh_auth_settings, token_available
from metadist.errors import MetadistError

log = logging.getLogger(__name__)
_quiet = logging.getLogger(f"{__name__}.ignore_files")  # Ray's upload says which ignore files it honours: once is enough
_quiet.setLevel(logging.WARNING)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the head's dashboard, which serves the Jobs API
ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # Ray's own order of precedence
# Never uploaded with the working directory: environments, run outputs and local MLflow stores (large, and
# meaningless on another machine), caches. Gitignore-style patterns, matched at any depth.
WORKING_DIR_EXCLUDES = (
    ".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info",
    "outputs", "mlruns", "mlflow.db", "mlartifacts",
)  # fmt: skip
# Passed to the job from the submitting environment, when set there: where the job records its run.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI",)
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
STATUS_POLL_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 60.0  # Ray sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default)
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class SubmissionError(MetadistError):
    """A job cannot be submitted, or the cluster's job server cannot be reached or refuses this client."""


# -- what is submitted -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSubmission:
    """A validated job, ready to be sent: the entry point, its runtime environment and the warnings about it."""

    submission_id: str
    entrypoint: str
    runtime_env: dict
    job_file: str  # relative to the working directory, as the entry point names it
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def prepare_submission(
    job: JobConfig,
    job_file: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    workers: int | None = None,
    working_dir: str | os.PathLike = ".",
    submission_id: str | None = None,
    pip: Sequence[str] = (),
    env: dict[str, str] | None = None,
    address: str | None = None,
) -> JobSubmission:
    """The submission of `job` (already validated, overrides applied) loaded from `job_file`; nothing is sent.

    `overrides` and `workers` are passed on to `metadist train` as given; `address` (the job server's) only
    serves the warnings."""
    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise SubmissionError(f"--working-dir {working_dir}: not a directory")
    path = Path(job_file).expanduser().resolve()
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise SubmissionError(
            f"{job_file}: the job file is not inside the working directory {root}, which is what the cluster gets; "
            f"move it there or pass --working-dir (a folder that holds it)"
        ) from None
    excluded_by = _excluded_from_upload(root, relative)
    if excluded_by:
        raise SubmissionError(f"{job_file}: the job file would not be uploaded with {root} (excluded by {excluded_by})")
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)} | dict(env or {})
    runtime_env: dict = {"working_dir": str(root), "excludes": list(WORKING_DIR_EXCLUDES)}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if pip:
        runtime_env["pip"] = list(pip)
    command = ["metadist", "train", relative.as_posix(), "--no-progress"]
    for item in overrides:
        command += ["--set", item]
    if workers is not None:
        command += ["--workers", str(workers)]
    return JobSubmission(
        submission_id=submission_id or default_submission_id(job.name),
        entrypoint=shlex.join(command),
        runtime_env=runtime_env,
        job_file=relative.as_posix(),
        metadata={"metadist_job": job.name, "metadist_job_file": relative.as_posix()},
        warnings=tuple(_warnings(job, env_vars, address)),
    )


def default_submission_id(job_name: str) -> str:
    """`<job name>-<UTC time>-<4 random hex digits>`: readable, sortable, and unlikely to collide."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", job_name).strip("-") or "metadist"
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`--env K=V` pairs as a dict; a pair without `=` or with an empty name is an error naming it."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmissionError(f"--env {pair!r}: expected NAME=VALUE")
        env[key] = value
    return env


def _excluded_from_upload(root: Path, relative: Path) -> str | None:
    """What would keep `relative` out of Ray's upload of `root` (an exclude pattern, a .gitignore or .rayignore),
    judged with Ray's own matchers along the path; None when it is uploaded."""
    try:
        from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files
    except ImportError:  # another Ray: let the upload decide
        return None
    # The path and each folder on the way to it, as Ray's walk meets them: root/a, root/a/b, ..., root/a/b/job.yaml.
    chain = [root.joinpath(*relative.parts[: i + 1]) for i in range(len(relative.parts))]
    excludes = _get_excludes(root, list(WORKING_DIR_EXCLUDES))
    if any(excludes(path) for path in chain):
        return f"metadist's working-dir excludes {list(WORKING_DIR_EXCLUDES)}"
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    for depth, directory in enumerate([root, *chain[:-1]]):
        ignored = get_excludes_from_ignore_files(directory, include_gitignore=include_gitignore, logger=_quiet)
        if any(match(path) for match in ignored for path in chain[depth:]):
            return f"an ignore file (.gitignore or .rayignore) in {directory}"
    return None


# -- warnings about where the run's results go -----------------------------------------------------------------------
def _warnings(job: JobConfig, env_vars: dict[str, str], address: str | None) -> list[str]:
    warnings = []
    checkpoint = job.checkpoint.uri
    if checkpoint is None or _is_relative_local(checkpoint):
        where = (f"checkpoint.uri = {checkpoint!r}" if checkpoint
                 else f"checkpoint.uri is unset (outputs/{job.name}/checkpoints)")
        warnings.append(
            f"{where}: the checkpoints go into the job's temporary working directory on the cluster and vanish with "
            f"it; set checkpoint.uri to storage that outlives the job (s3://..., gs://..., a shared file system)"
            + (" (the MLflow run keeps a copy as artifacts)"
               if job.tracking.enabled and job.tracking.log_checkpoints else "")
        )
    if job.tracking.enabled:
        tracking = job.tracking.uri or env_vars.get("MLFLOW_TRACKING_URI")
        if tracking is None or _is_relative_local(tracking):
            where = (f"tracking uri {tracking!r}" if tracking
                     else "tracking.uri is unset and MLFLOW_TRACKING_URI is not set here")
            warnings.append(
                f"{where}: the MLflow run is written into the job's temporary working directory on the cluster and "
                f"vanishes with it; point MLFLOW_TRACKING_URI (forwarded to the job) or tracking.uri at a tracking "
                f"server (http://...)"
            )
        elif _host(tracking) in _LOOPBACK_HOSTS and address is not None and _host(address) not in _LOOPBACK_HOSTS:
            warnings.append(
                f"tracking uri {tracking!r} is this machine's loopback, but the job runs on {address}: there it "
                f"names the cluster node itself"
            )
    return warnings


def _is_relative_local(uri: str) -> bool:
    """A path relative to the current directory, with or without a `file:` / `sqlite:///` scheme."""
    if uri.startswith("sqlite:///"):
        return not uri[len("sqlite:///"):].startswith("/")
    if uri.startswith("file://"):
        return not uri[len("file://"):].startswith("/")
    if uri.startswith("file:"):
        return not uri[len("file:"):].startswith("/")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return False  # s3://, gs://, http://, memory:// ...: not the job's directory
    return not os.path.isabs(uri)


def _host(uri: str) -> str | None:
    return urlparse(uri if "://" in uri else f"http://{uri}").hostname


# -- the job server --------------------------------------------------------------------------------------------------
def resolve_address(address: str | None) -> str:
    """The job server's address: the one given, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else the default."""
    return address or next((os.environ[k] for k in ADDRESS_ENVS if os.environ.get(k)), None) or DEFAULT_ADDRESS


class JobServer:
    """A cluster's job server: submit, follow, inspect and stop jobs. Failures are `SubmissionError`s."""

    def __init__(self, address: str | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = resolve_address(address)
        with _calls(self.address, "reach the job server"), _client_environment(self.address):
            self._client = JobSubmissionClient(self.address)

    def submit(self, submission: JobSubmission) -> str:
        with _calls(self.address, f"submit {submission.submission_id}"):
            return self._client.submit_job(
                entrypoint=submission.entrypoint,
                submission_id=submission.submission_id,
                runtime_env=submission.runtime_env,
                metadata=submission.metadata,
            )

    def info(self, submission_id: str):
        """Ray's `JobDetails`: status, message, entry point, times, runtime environment, driver exit code."""
        with _calls(self.address, f"get job {submission_id}"):
            return self._client.get_job_info(submission_id)

    def status(self, submission_id: str) -> str:
        with _calls(self.address, f"get the status of job {submission_id}"):
            return str(self._client.get_job_status(submission_id))

    def logs(self, submission_id: str) -> str:
        with _calls(self.address, f"get the logs of job {submission_id}"):
            return self._client.get_job_logs(submission_id)

    def list(self) -> list:
        with _calls(self.address, "list jobs"):
            return self._client.list_jobs()

    def follow(self, submission_id: str, write: Callable[[str], object]):
        """Stream the job's logs to `write` until it ends; its final `JobDetails`.

        The stream runs in a thread of its own so that Ctrl-C reaches this (main) thread as KeyboardInterrupt at
        once. Under asyncio.run in the main thread, Ctrl-C only cancels the streaming task, and a cancellation that
        lands in aiohttp's timed websocket read can be lost: seen as a follower that went on streaming after Ctrl-C.
        """

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(submission_id):
                write(chunk)

        failures: list[BaseException] = []
        loop = asyncio.new_event_loop()
        streaming = loop.create_task(tail())

        def stream() -> None:
            try:
                loop.run_until_complete(streaming)
            except BaseException as exc:  # handed to the main thread, below
                failures.append(exc)
            finally:  # what asyncio.run does on the way out
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.run_until_complete(loop.shutdown_default_executor())
                finally:
                    loop.close()

        thread = threading.Thread(target=stream, name=f"logs-{submission_id}", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.2)  # short waits: a signal's handler runs between them
        except KeyboardInterrupt:
            # Stop streaming too (the job itself goes on); a daemon thread that misses the cancel can't hold us up.
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # closed in between: the stream has ended anyway
                    loop.call_soon_threadsafe(streaming.cancel)
            thread.join(2)
            raise
        with _calls(self.address, f"follow the logs of job {submission_id}"):
            try:
                if failures:
                    raise failures[0]
            except RuntimeError as exc:  # the stream closed early (a dashboard restart): the job may go on
                if "does not exist" in str(exc):
                    raise
                log.warning("job %s: the log stream ended early (%s); waiting for the job to end", submission_id, exc)
        return self.wait(submission_id)

    def wait(self, submission_id: str, timeout_s: float | None = None):
        """Poll until the job reaches a terminal status (or `timeout_s` passes); its `JobDetails` then."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.info(submission_id)
            if str(info.status) in TERMINAL_STATUSES or (deadline is not None and time.monotonic() > deadline):
                return info
            time.sleep(STATUS_POLL_INTERVAL_S)

    def stop(self, submission_id: str, *, wait: bool = True):
        """Ask the job to stop (SIGTERM, then SIGKILL), and with `wait` until it has; its `JobDetails`."""
        with _calls(self.address, f"stop job {submission_id}"):
            self._client.stop_job(submission_id)
        return self.wait(submission_id, timeout_s=STOP_TIMEOUT_S) if wait else self.info(submission_id)


@contextlib.contextmanager
def _client_environment(address: str) -> Iterator[None]:
    """The environment Ray's client is built in, restored afterwards (the client keeps what it read: its address
    and its request headers).

    The address: Ray's client takes $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS over the one it is given
    (`get_address_for_submission_client` in ray/dashboard/utils.py); here they name the address chosen.
    Token mode: Ray's client sends the token only in token mode, so RAY_AUTH_MODE=token when it is unset and a
    token is at hand; Ray's cached settings are refreshed to match, before and after."""
    saved = {k: os.environ.get(k) for k in (*ADDRESS_ENVS, AUTH_MODE_ENV)}
    os.environ[ADDRESS_ENVS[0]] = address
    os.environ.pop(ADDRESS_ENVS[1], None)
    if saved[AUTH_MODE_ENV] is None and token_available():
        os.environ[AUTH_MODE_ENV] = "token"
    refresh_auth_settings()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        refresh_auth_settings()


@contextlib.contextmanager
def _calls(address: str, what: str) -> Iterator[None]:
    """Ray's failures of a job-server call as `SubmissionError`s that say what to do."""
    import aiohttp
    import requests

    try:
        yield
    except (AuthenticationError, aiohttp.WSServerHandshakeError) as exc:
        if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status not in (401, 403):
            raise SubmissionError(f"{address}: cannot {what}: {exc}") from exc
        refused = "invalid" in str(exc).lower() or "forbidden" in str(exc).lower() or getattr(exc, "status", 0) == 403
        raise SubmissionError(
            f"{address}: cannot {what}: "
            + ("the cluster refused this client's authentication token" if refused
               else "the cluster requires an authentication token and this client sent none")
            + f". Get the cluster's token with `ray get-auth-token` on its head node and put it in ~/.ray/auth_token "
            f"or ${AUTH_TOKEN_ENV} (with {AUTH_MODE_ENV}=token, set for you when a token is there)"
        ) from exc
    except (ConnectionError, requests.exceptions.RequestException, aiohttp.ClientError, RpcError) as exc:
        # RpcError: an address without a scheme is a GCS address, which Ray asks for the job server's (and gives up)
        raise SubmissionError(
            f"{address}: cannot {what}: no Ray job server answers there ({exc}). Give the head's dashboard address "
            f"with --address http://HEAD:8265 (or $RAY_API_SERVER_ADDRESS); from outside the cluster's network, "
            f"`ray dashboard cluster.yaml` forwards it to http://127.0.0.1:8265"
        ) from exc
    except (RuntimeError, ValueError) as exc:  # Ray's "Request failed with status code 404: Job ... does not exist."
        message = str(exc).strip()
        if "does not exist" in message or "404" in message:
            raise SubmissionError(f"{address}: cannot {what}: no such job ({message})") from exc
        raise SubmissionError(f"{address}: cannot {what}: {message}") from exc
