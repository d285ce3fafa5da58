"""A Python client of `metadist serve`: the same answers as FewShotClassifier, computed by the server.

>>> with Client("127.0.0.1:50051", token=token) as client:
...     predictions = client.adapt_and_classify(support_images, support_labels, query_images)
...     task = client.adapt(support_images, support_labels)          # adapt once ...
...     for batch in batches:
...         client.classify(task, batch)                              # ... classify many (until the handle expires)

Images are encoded files (bytes: PNG, JPEG ...; any size) or paths to them. A failed call raises ServingError,
whose `code` is the gRPC status code's name ('INVALID_ARGUMENT', 'NOT_FOUND', 'UNAUTHENTICATED' ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metadist.errors import ServingError
from metadist.inference import Prediction
from metadist.serving import fewshot_pb2 as pb
from metadist.serving import fewshot_pb2_grpc
from metadist.serving.config import MIB, is_loopback

logger = logging.getLogger(__name__)

ClientImage = bytes | os.PathLike


@dataclass(frozen=True)
class RemoteTask:
    """An adapted task kept by the server, named by its handle."""

    handle: str
    labels: tuple[str, ...]  # the task's classes, sorted
    expires_in_s: float  # unused this long, the server forgets it (each classify renews it)


class Client:
    """Calls to one server over one channel (thread-safe: threads may share a client)."""

    def __init__(self, address: str, token: str | None = None, tls_ca: str | os.PathLike | None = None, *,
                 tls: bool = False, tls_cert: str | os.PathLike | None = None, tls_key: str | os.PathLike | None = None,
                 tls_server_name: str | None = None, timeout_s: float | None = 60.0, max_message_mb: float = 64) -> None:
        """
        address: host:port of the server. token: sent as 'authorization: Bearer <token>' call metadata.
        tls_ca: PEM file of the CA (or self-signed certificate) to trust; tls=True with no tls_ca trusts the system's
        roots. tls_cert/tls_key: this client's certificate (mutual TLS). tls_server_name: the name to check the
        server's certificate against, when not the address's host. timeout_s: each call's deadline (None: none).
        """
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options: list[tuple[str, int | str]] = [("grpc.max_receive_message_length", int(max_message_mb * MIB))]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls or tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca, "tls_ca"), private_key=_read(tls_key, "tls_key"),
                certificate_chain=_read(tls_cert, "tls_cert"),
            )
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            if token and not is_loopback(address):
                logger.warning("sending the token to %s without TLS: anyone on the path can read it", address)
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = fewshot_pb2_grpc.FewShotStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- the service ----------------------------------------------------------------------------------------------------
    def adapt_and_classify(self, support_images: Sequence[ClientImage], support_labels: Sequence[str],
                           query_images: Sequence[ClientImage]) -> list[Prediction]:
        request = pb.AdaptAndClassifyRequest(support=_support(support_images, support_labels), queries=_images(query_images))
        return _predictions(self._call(self._stub.AdaptAndClassify, request, "AdaptAndClassify"))

    def adapt(self, support_images: Sequence[ClientImage], support_labels: Sequence[str]) -> RemoteTask:
        response = self._call(self._stub.Adapt, pb.AdaptRequest(support=_support(support_images, support_labels)), "Adapt")
        return RemoteTask(response.handle, tuple(response.labels), response.expires_in_s)

    def classify(self, task: RemoteTask | str, query_images: Sequence[ClientImage]) -> list[Prediction]:
        handle = task.handle if isinstance(task, RemoteTask) else task
        return _predictions(self._call(self._stub.Classify, pb.ClassifyRequest(handle=handle, queries=_images(query_images)), "Classify"))

    def release(self, task: RemoteTask | str) -> bool:
        """Let the server forget the task now; False when it had already (expired, or released before)."""
        handle = task.handle if isinstance(task, RemoteTask) else task
        return self._call(self._stub.Release, pb.ReleaseRequest(handle=handle), "Release").released

    def info(self) -> dict:
        """The served model (job, step, algorithm, image size ...) and the server's limits."""
        return _as_dict(self._call(self._stub.Info, pb.InfoRequest(), "Info"))

    def health(self, service: str = "") -> str:
        """'SERVING' or 'NOT_SERVING' (grpc.health.v1); service '' is the whole server."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), "Health.Check")
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the channel connects, or raise ServingError (UNAVAILABLE) after timeout_s."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise ServingError(f"{self.address}: no server answered within {timeout_s:g} s", code="UNAVAILABLE") from None

    # -- plumbing -------------------------------------------------------------------------------------------------------
    def _call(self, rpc, request, what: str):
        try:
            return rpc(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code()
            raise ServingError(f"{self.address}: {what}: {code.name}: {exc.details()}", code=code.name) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read(path: str | os.PathLike | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ServingError(f"{what} {path}: cannot be read ({exc.strerror})", code="INVALID_ARGUMENT") from exc


def _image(image: ClientImage) -> pb.Image:
    if isinstance(image, os.PathLike):
        return pb.Image(data=_read(image, "image"), name=os.fspath(image))
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise ServingError(f"images are encoded files (bytes) or paths, got {type(image).__name__}", code="INVALID_ARGUMENT")
    return pb.Image(data=bytes(image), name=getattr(image, "source", ""))  # files read by read_support keep their name


def _images(images: Sequence[ClientImage]) -> list[pb.Image]:
    return [_image(image) for image in images]


def _support(images: Sequence[ClientImage], labels: Sequence[str]) -> list[pb.SupportExample]:
    if len(images) != len(labels):
        raise ServingError(f"support: {len(images)} images but {len(labels)} labels", code="INVALID_ARGUMENT")
    return [pb.SupportExample(image=_image(image), label=str(label)) for image, label in zip(images, labels)]


def _as_dict(message: Message) -> dict:
    """Every field (defaults included), as Python values: nested messages as dicts, repeated fields as lists."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if isinstance(value, Message):
            value = _as_dict(value)
        elif not isinstance(value, (str, bytes, int, float, bool)):
            value = list(value)
        out[field.name] = value
    return out


def _predictions(response: pb.ClassifyResponse) -> list[Prediction]:
    labels = list(response.labels)
    return [Prediction(p.label, dict(zip(labels, p.scores))) for p in response.predictions]
