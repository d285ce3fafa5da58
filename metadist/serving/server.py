"""The gRPC server: the FewShot service, the standard health service, token authentication and TLS.

>>> server = Server(ServeConfig(checkpoint="outputs/omniglot-5way-1shot/checkpoints", address="127.0.0.1:0")).start()
>>> server.address                    # '127.0.0.1:43117': port 0 picks a free port
>>> server.stop()

Health (grpc.health.v1, service "" and "metadist.serving.v1.FewShot") answers without a token, so load
balancers and Kubernetes probes can use it; it tells only SERVING or NOT_SERVING. Every other method needs the
token when one is configured, checked on the call's metadata before its request is read. Nothing on the wire is
pickled: requests and answers are protobuf messages.

The server is gRPC's asyncio server: a call that has not sent its request holds no thread; received requests are
decoded and computed in max_workers threads. Its limits on connections, keepalive and logging: docs/serving.md,
"What a client can hold open".
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import NoReturn

import grpc
import grpc.aio
import torch
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metadist.core import checkpoint as ckpt_io
from metadist.errors import ConfigError
from metadist.inference import FewShotClassifier
from metadist.serving import fewshot_pb2_grpc
from metadist.serving.config import MIB, ServeConfig
from metadist.serving.service import NO_DEADLINE_S, SERVICE_NAME, FewShotService, RpcStatus

logger = logging.getLogger(__name__)

AUTH_METADATA = "authorization"  # value: "Bearer <token>"
AUTH_SCHEME = "Bearer "
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)  # methods callable without a token
STREAM_WINDOW_BYTES = 1 << 20  # per-stream receive window (see Server.options)
COMPUTE_METHODS = frozenset({"AdaptAndClassify", "Adapt", "Classify"})  # decode and compute: in the worker threads


class RefusalLog:
    """Refused calls as WARNING lines, at most one per interval_s; the next line counts those left out.

    Thread-safe. A flood of refused calls (a wrong token, a busy server) costs one line per interval, not one per call.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self.suppressed = 0  # refusals since the last line

    def refused(self, method: str, reason: str) -> None:
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.interval_s:
                self.suppressed += 1
                return
            suppressed, self.suppressed, self._last = self.suppressed, 0, now
        more = f" ({suppressed} more refused calls in the last {self.interval_s:g} s were not logged)" if suppressed else ""
        logger.warning("refused %s: %s%s", method, reason, more)

    def flush(self) -> None:
        with self._lock:
            suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            logger.warning("%d more refused calls were not logged", suppressed)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses calls (UNAUTHENTICATED) whose 'authorization' metadata is not 'Bearer <token>'; never logs tokens.

    It runs when a call's metadata arrives, before its request message: a refused call's request is never read
    (the refusal does not wait for it, nor buffer it; HTTP/2 flow control stops the sender).
    """

    def __init__(self, token: str, refusals: RefusalLog) -> None:
        self._token = token.encode("ascii")
        self._refusals = refusals
        self._deny = {reason: _deny_handler(message) for reason, message in (
            ("missing", f"this server needs a token: '{AUTH_METADATA}: {AUTH_SCHEME}<token>' call metadata"),
            ("wrong", "the token is not valid"),
        )}

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return await continuation(handler_call_details)
        supplied = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_METADATA:
                supplied = value if isinstance(value, str) else value.decode("ascii", "replace")
        if supplied is None:
            self._refusals.refused(handler_call_details.method, "no token")
            return self._deny["missing"]
        scheme, given = supplied[: len(AUTH_SCHEME)], supplied[len(AUTH_SCHEME):]
        # Constant-time comparison: how long it takes says nothing about how much of the token was right.
        if scheme.lower() == AUTH_SCHEME.lower() and hmac.compare_digest(given.encode("utf-8", "replace"), self._token):
            return await continuation(handler_call_details)
        self._refusals.refused(handler_call_details.method, "wrong token")
        return self._deny["wrong"]


def _deny_handler(message: str) -> grpc.RpcMethodHandler:
    # Request-streaming, so that gRPC does not read the request before calling it: it never does.
    async def deny(request_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.stream_unary_rpc_method_handler(deny)


class _CallContext:
    """What FewShotService reads of a call, safe to read from a worker thread: deadline, peer, whether it is active.

    The asyncio context belongs to the event loop; this copy is taken on the loop when the request has arrived.
    abort() raises RpcStatus, which the loop turns into the call's status.
    """

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        self._deadline = None if remaining is None or remaining > NO_DEADLINE_S else time.monotonic() + remaining
        self._peer = context.peer()
        self._ended = threading.Event()
        context.add_done_callback(lambda _: self._ended.set())

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return not self._ended.is_set()

    def peer(self) -> str:
        return self._peer

    def abort(self, code: grpc.StatusCode, message: str) -> NoReturn:
        raise RpcStatus(code, message)


class AsyncFewShot(fewshot_pb2_grpc.FewShotServicer):
    """The FewShot RPCs on the event loop: admission (max_concurrent_rpcs), then FewShotService's method, in a
    worker thread for those that decode and compute (COMPUTE_METHODS), on the loop for the others (Info, Release)."""

    def __init__(self, service: FewShotService, workers: futures.ThreadPoolExecutor, max_calls: int, refusals: RefusalLog) -> None:
        self.service = service
        self.workers = workers
        self.max_calls = max_calls
        self.refusals = refusals
        self.calls = 0  # admitted and not yet answered; read and written on the loop only

    async def _run(self, name: str, request, context: grpc.aio.ServicerContext):
        if self.calls >= self.max_calls:
            self.service.stats.count(name, grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.refusals.refused(name, f"server busy ({self.calls} calls in progress)")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"Concurrent RPC limit exceeded: {self.max_calls} calls in progress (max_concurrent_rpcs); retry later")
        self.calls += 1
        try:
            call, method = _CallContext(context), getattr(self.service, name)
            if name in COMPUTE_METHODS:
                response = await asyncio.get_running_loop().run_in_executor(self.workers, method, request, call)
            else:
                response = method(request, call)
        except RpcStatus as status:
            await context.abort(status.code, str(status))
        finally:
            self.calls -= 1
        return response

    async def AdaptAndClassify(self, request, context):
        return await self._run("AdaptAndClassify", request, context)

    async def Adapt(self, request, context):
        return await self._run("Adapt", request, context)

    async def Classify(self, request, context):
        return await self._run("Classify", request, context)

    async def Release(self, request, context):
        return await self._run("Release", request, context)

    async def Info(self, request, context):
        return await self._run("Info", request, context)


class _EventLoop:
    """One asyncio loop in a daemon thread, shared by every Server of the process."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coroutine, timeout_s: float | None = None):
        """Run `coroutine` on the shared loop; block for its result."""
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="metadist-serve-loop", daemon=True).start()
                cls._loop = loop
        return asyncio.run_coroutine_threadsafe(coroutine, cls._loop).result(timeout_s)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc.strerror})") from exc


class Server:
    """One few-shot server: load the checkpoint, then start(); stop() drains calls in progress for grace_s.

    The gRPC server is asyncio's (grpc.aio), on an event loop thread shared by the process's servers: a call costs a
    thread only once its request has arrived and been admitted, while it is decoded and computed (max_workers of
    them). Health checks are answered on the loop, so they answer while every worker is busy.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._token = config.resolve_token()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        saved = ckpt_io.load(config.checkpoint)
        # One classifier per compute slot (a module must not be shared across threads: see ClassifierPool).
        replicas = [FewShotClassifier(saved, device=config.device, inner_steps=config.inner_steps, where=config.checkpoint,
                                      max_image_pixels=config.max_image_pixels)
                    for _ in range(config.max_concurrency)]
        for replica in replicas[1:]:
            replica.meta_params = replicas[0].meta_params  # read only: one copy on the device
        self.classifier = replicas[0]
        self.service = FewShotService(replicas, config, step=saved.step)
        self.refusals = RefusalLog(config.refusal_log_interval_s)
        self.health: health_async.HealthServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._workers: futures.ThreadPoolExecutor | None = None
        self._stopped = threading.Event()
        self.port: int | None = None

    @property
    def address(self) -> str:
        """host:port as bound (the port chosen when the configuration asked for port 0)."""
        host = self.config.address.rpartition(":")[0]
        return f"{host}:{self.port}"

    def options(self) -> list[tuple[str, int]]:
        """gRPC channel arguments of the server: message size, streams, keepalive and connection lifetimes."""
        config = self.config
        max_bytes = int(config.max_message_mb * MIB)
        return [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Without this, Linux lets a second server bind the same port and silently take half the calls.
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", config.max_streams_per_connection),
            ("grpc.max_connection_idle_ms", _ms(config.connection_idle_s)),
            ("grpc.max_connection_age_ms", _ms(config.connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(config.connection_age_grace_s)),
            ("grpc.keepalive_time_ms", _ms(config.keepalive_s)),
            ("grpc.keepalive_timeout_ms", _ms(config.keepalive_timeout_s)),
            # Keepalive enforcement: a client pinging more often than this gets GOAWAY after max_ping_strikes pings.
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(config.min_client_ping_interval_s)),
            ("grpc.http2.max_ping_strikes", 2),
            # A fixed per-stream receive window instead of one grown by bandwidth probing: what the server reads of a
            # call before refusing it (no token) is then at most this much, flood after flood. With probing, the
            # window grew under a flood of refused 31 MB requests and memory with it (tests/test_serving_faults.py).
            # 1 MiB per round trip still moves a 30 MB request in under 2 s at 50 ms.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
        ]

    def start(self) -> "Server":
        if self._server is None:
            _EventLoop.run(self._start())
            self._log_start()
        return self

    async def _start(self) -> None:
        config = self.config
        self._workers = futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="metadist-serve")
        self.health = health_async.HealthServicer()  # its conditions belong to this loop
        server = grpc.aio.server(
            interceptors=[TokenAuth(self._token, self.refusals)] if self._token else [], options=self.options(),
        )
        fewshot_pb2_grpc.add_FewShotServicer_to_server(
            AsyncFewShot(self.service, self._workers, config.max_concurrent_rpcs, self.refusals), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            if config.tls:
                assert config.tls_key is not None and config.tls_cert is not None  # ServeConfig: both, or neither
                credentials = grpc.ssl_server_credentials(
                    [(_read(config.tls_key, "tls_key"), _read(config.tls_cert, "tls_cert"))],
                    root_certificates=_read(config.tls_client_ca, "tls_client_ca") if config.tls_client_ca is not None else None,
                    require_client_auth=config.tls_client_ca is not None,
                )
                port = server.add_secure_port(config.address, credentials)
            else:
                port = server.add_insecure_port(config.address)
        except RuntimeError as exc:  # grpc raises on a failed bind (older versions return port 0)
            self._workers.shutdown(wait=False)
            raise ConfigError(f"address {config.address}: cannot listen ({exc}); is the port in use?") from None
        if not port:
            self._workers.shutdown(wait=False)
            raise ConfigError(f"address {config.address}: cannot listen; is the port in use, or the host not this machine's?")
        self.port = port
        await server.start()
        self._server = server
        self._stopped.clear()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _log_start(self) -> None:
        config = self.config
        logger.info("configuration: %s", json.dumps(config.redacted()))
        security = ("TLS" + (" with client certificates" if config.tls_client_ca else "") if config.tls else "plaintext") + (
            ", token required" if self._token else ", no token")
        clf = self.classifier
        logger.info(
            "serving %s (%s %s, step %d) on %s: %s", config.checkpoint, clf.job.algorithm.name, clf.job.model.name,
            self.service.step, self.address, security,
        )
        if not config.loopback and not self._token:
            logger.warning("%s is reachable from other machines and no token is set: anyone who can reach it may use the model", self.address)
        if not config.loopback and self._token and not config.tls:
            logger.warning("the token travels unencrypted to %s: set tls_cert and tls_key", self.address)

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let calls in progress finish for grace_s, then end."""
        if self._server is None:
            return
        _EventLoop.run(self._stop(self.config.grace_s if grace_s is None else grace_s))
        self.refusals.flush()
        calls = ", ".join(f"{method} {code}: {n}" for (method, code), n in sorted(self.service.stats.calls.items()))
        logger.info("stopped %s; calls: %s", self.address, calls or "none")

    async def _stop(self, grace_s: float) -> None:
        server, self._server = self._server, None
        assert server is not None and self.health is not None and self._workers is not None
        await self.health.enter_graceful_shutdown()
        await server.stop(grace_s)
        # Computations of calls cut off by the grace period finish in their threads; nobody waits for their answers.
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (True) or timeout_s passes (False)."""
        return self._server is None or self._stopped.wait(timeout_s)

    def __enter__(self) -> "Server":
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
