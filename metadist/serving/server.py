"""The gRPC server: the FewShot service, the standard health service, token authentication and TLS.

>>> server = Server(ServeConfig(checkpoint="outputs/omniglot-5way-1shot/checkpoints", address="127.0.0.1:0")).start()
>>> server.address                    # '127.0.0.1:43117': port 0 picks a free port
>>> server.stop()

Health (grpc.health.v1, service "" and "metadist.serving.v1.FewShot") answers without a token, so load
balancers and Kubernetes probes can use it; it tells only SERVING or NOT_SERVING. Every other method needs the
token when one is configured. Nothing on the wire is pickled: requests and answers are protobuf messages.
"""

from __future__ import annotations

import hmac
import json
import logging
from concurrent import futures
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from metadist.core import checkpoint as ckpt_io
from metadist.errors import ConfigError
from metadist.inference import FewShotClassifier
from metadist.serving import fewshot_pb2_grpc
from metadist.serving.config import MIB, ServeConfig
from metadist.serving.service import SERVICE_NAME, FewShotService

logger = logging.getLogger(__name__)

AUTH_METADATA = "authorization"  # value: "Bearer <token>"
AUTH_SCHEME = "Bearer "
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)  # methods callable without a token


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls (UNAUTHENTICATED) whose 'authorization' metadata is not 'Bearer <token>'; never logs tokens."""

    def __init__(self, token: str) -> None:
        self._token = token.encode("ascii")
        self._deny = {reason: _deny_handler(message) for reason, message in (
            ("missing", f"this server needs a token: '{AUTH_METADATA}: {AUTH_SCHEME}<token>' call metadata"),
            ("wrong", "the token is not valid"),
        )}

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return continuation(handler_call_details)
        supplied = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_METADATA:
                supplied = value if isinstance(value, str) else value.decode("ascii", "replace")
        if supplied is None:
            logger.warning("refused %s: no token", handler_call_details.method)
            return self._deny["missing"]
        scheme, given = supplied[: len(AUTH_SCHEME)], supplied[len(AUTH_SCHEME):]
        # Constant-time comparison: how long it takes says nothing about how much of the token was right.
        if scheme.lower() == AUTH_SCHEME.lower() and hmac.compare_digest(given.encode("utf-8", "replace"), self._token):
            return continuation(handler_call_details)
        logger.warning("refused %s: wrong token", handler_call_details.method)
        return self._deny["wrong"]


def _deny_handler(message: str) -> grpc.RpcMethodHandler:
    def deny(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(deny)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc.strerror})") from exc


class Server:
    """One few-shot server: load the checkpoint, then start(); stop() drains calls in progress for grace_s."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._token = config.resolve_token()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        saved = ckpt_io.load(config.checkpoint)
        # One classifier per compute slot (a module must not be shared across threads: see ClassifierPool).
        replicas = [FewShotClassifier(saved, device=config.device, inner_steps=config.inner_steps, where=config.checkpoint)
                    for _ in range(config.max_concurrency)]
        for replica in replicas[1:]:
            replica.meta_params = replicas[0].meta_params  # read only: one copy on the device
        self.classifier = replicas[0]
        self.service = FewShotService(replicas, config, step=saved.step)
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        """host:port as bound (the port chosen when the configuration asked for port 0)."""
        host = self.config.address.rpartition(":")[0]
        return f"{host}:{self.port}"

    def start(self) -> "Server":
        config = self.config
        max_bytes = int(config.max_message_mb * MIB)
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Without this, Linux lets a second server bind the same port and silently take half the calls.
            ("grpc.so_reuseport", 0),
        ]
        interceptors = [TokenAuth(self._token)] if self._token else []
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="metadist-serve"),
            interceptors=interceptors, options=options, maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        fewshot_pb2_grpc.add_FewShotServicer_to_server(self.service, server)
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
            raise ConfigError(f"address {config.address}: cannot listen ({exc}); is the port in use?") from exc
        if not port:
            raise ConfigError(f"address {config.address}: cannot listen; is the port in use, or the host not this machine's?")
        self.port = port
        server.start()
        self._server = server
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._log_start()
        return self

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
        self.health.enter_graceful_shutdown()
        self._server.stop(self.config.grace_s if grace_s is None else grace_s).wait()
        self._server = None
        calls = ", ".join(f"{method} {code}: {n}" for (method, code), n in sorted(self.service.stats.calls.items()))
        logger.info("stopped %s; calls: %s", self.address, calls or "none")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (True) or timeout_s passes (False)."""
        return self._server is None or not self._server.wait_for_termination(timeout_s)  # grpc: True = timed out

    def __enter__(self) -> "Server":
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
