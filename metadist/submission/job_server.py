"""The client of a Ray cluster's job server (Ray Jobs, `JobSubmissionClient`): submit, follow, stop and list jobs.

Where the job server is (`job_server_address`): `--address`, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else
http://127.0.0.1:8265 (the dashboard port on the head; `ray dashboard cluster.yaml` forwards it over SSH). Ray's
client lets those variables override an explicit address; here the explicit address wins.

Token authentication: the job server of a cluster started with RAY_AUTH_MODE=token wants `Authorization: Bearer
<token>` on every request. Ray's client adds it (`get_auth_headers_if_auth_enabled` in
ray/_private/authentication/http_token_authentication.py), once, when it is built, and only if this process runs in
token mode, which for an explicit address means RAY_AUTH_MODE=token; as `metadist.distributed.cluster.connect` does,
the mode is switched on when it is unset and a token is at hand ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token), here only while the client is built. A refused or missing token (HTTP 403/401, raised by Ray as
`AuthenticationError`) and an unreachable server are `SubmissionError`s that say what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from ray.exceptions import AuthenticationError, RpcError

from metadist.distributed.auth import AUTH_MODE_ENV, AUTH_TOKEN_ENV, refresh_auth_settings, token_available
from metadist.submission.prepare import JobSubmission, SubmissionError

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the head's dashboard, which serves the Jobs API
ADDRESS_ENVS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # Ray's own order of precedence
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
STATUS_POLL_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 60.0  # Ray sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default)


# -- the job server --------------------------------------------------------------------------------------------------
def job_server_address(address: str | None) -> str:
    """The job server's address: the one given, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else the default."""
    return address or next((os.environ[k] for k in ADDRESS_ENVS if os.environ.get(k)), None) or DEFAULT_ADDRESS


class JobServer:
    """A cluster's job server: submit, follow, inspect and stop jobs. Failures are `SubmissionError`s."""

    def __init__(self, address: str | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = job_server_address(address)
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
