"""The FewShot RPCs over a FewShotClassifier: request limits, deadlines, handles, errors as gRPC status codes.

Adaptation and classification are the classifier's (the same code as `metadist predict`); this module only
turns protobuf messages into its inputs and its answers and errors back into messages and status codes.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from metadist.data.images import open_image
from metadist.errors import DataImportError, MetadistError, PredictionError
from metadist.inference import AdaptedTask, FewShotClassifier, Prediction
from metadist.inference.classifier import named
from metadist.serving import fewshot_pb2 as pb
from metadist.serving import fewshot_pb2_grpc
from metadist.serving.config import MIB, ServeConfig
from metadist.serving.handles import HandleStore

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FewShot"].full_name  # "metadist.serving.v1.FewShot"
# A call without a deadline reports gRPC's "infinite future" as its time remaining: anything beyond this is none.
NO_DEADLINE_S = 1e8
MAX_NAME_CHARS = 200  # image names are echoed in error messages and logs: long ones are clipped


class RpcStatus(Exception):
    """Ends a call with a status code other than OK and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ClassifierPool:
    """One classifier per compute slot, all over the same checkpoint: a computation holds one for its duration.

    A shared module is not safe across threads: torch.func.functional_call swaps the module's parameters for the
    length of a call, so two threads on one module would compute with each other's weights (or trip functorch's
    internal checks). Each replica owns its module; the meta-parameters are read only and shared.
    """

    def __init__(self, classifiers: list[FewShotClassifier]) -> None:
        self.size = len(classifiers)
        self._free: queue.LifoQueue[FewShotClassifier] = queue.LifoQueue()
        for classifier in classifiers:
            self._free.put(classifier)

    def acquire(self, timeout_s: float | None) -> FewShotClassifier | None:
        """A free classifier, or None when none came free within timeout_s."""
        try:
            return self._free.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def release(self, classifier: FewShotClassifier) -> None:
        self._free.put(classifier)


class ServiceStats:
    """Counters of a running service, for logs and tests: calls by (method, status), work started, waiters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.computations = 0  # adapt or classify computations started
        self.waiting = 0  # calls waiting for a compute slot now

    def count(self, method: str, code: grpc.StatusCode) -> None:
        with self._lock:
            self.calls[method, code.name] += 1

    def add(self, name: str, delta: int) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)


def _rpc(method):
    """Runs an RPC body: its RpcStatus and metadist errors become status codes; each call is counted and logged."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self: "FewShotService", request, context: grpc.ServicerContext):
        start = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        try:
            return method(self, request, context)
        except RpcStatus as status:
            code, message = status.code, str(status)
        except MetadistError as exc:  # the classifier's errors name the input at fault: the caller can act on them
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except Exception:  # a bug, not the caller's input: the traceback goes to the log, a plain status to the caller
            logger.exception("%s from %s failed", name, context.peer())
            code, message = grpc.StatusCode.INTERNAL, f"{name}: internal error of the server (its log has the details)"
        finally:
            self.stats.count(name, code)
            logger.debug("%s from %s: %s in %.1f ms", name, context.peer(), code.name, 1e3 * (time.perf_counter() - start))
        context.abort(code, message)  # raises: grpc ends the call with this status

    return handler


class FewShotService(fewshot_pb2_grpc.FewShotServicer):
    def __init__(self, classifiers: list[FewShotClassifier], config: ServeConfig, *, step: int = 0) -> None:
        """classifiers: one per compute slot (max_concurrency of them), over the same checkpoint."""
        self.classifier = classifiers[0]  # describes the model (Info); any replica would do
        self.config = config
        self.step = step
        self.handles = HandleStore(ttl_s=config.handle_ttl_s, max_handles=config.max_handles, max_bytes=int(config.max_handles_mb * MIB))
        self.compute_slots = ClassifierPool(classifiers)
        self.stats = ServiceStats()
        self._max_image_bytes = int(config.max_image_mb * MIB)

    # -- RPCs ---------------------------------------------------------------------------------------------------------
    @_rpc
    def AdaptAndClassify(self, request: pb.AdaptAndClassifyRequest, context) -> pb.ClassifyResponse:
        support_images, support_labels = self._support(request.support)
        query_images = self._queries(request.queries)
        with self._compute_slot(context) as classifier:
            task = self._adapt(classifier, support_images, support_labels)
            self._check_deadline(context, "before classifying")
            predictions = self._classify(classifier, task, query_images)
        return _classify_response(task, predictions)

    @_rpc
    def Adapt(self, request: pb.AdaptRequest, context) -> pb.AdaptResponse:
        support_images, support_labels = self._support(request.support)
        with self._compute_slot(context) as classifier:
            task = self._adapt(classifier, support_images, support_labels)
        try:
            handle = self.handles.put(task)
        except MemoryError as exc:
            raise RpcStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
        return pb.AdaptResponse(handle=handle, labels=task.labels, expires_in_s=self.handles.ttl_s)

    @_rpc
    def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        task = self._task(request.handle)
        query_images = self._queries(request.queries)
        with self._compute_slot(context) as classifier:
            predictions = self._classify(classifier, task, query_images)
        return _classify_response(task, predictions)

    @_rpc
    def Release(self, request: pb.ReleaseRequest, context) -> pb.ReleaseResponse:
        return pb.ReleaseResponse(released=self.handles.release(request.handle))

    @_rpc
    def Info(self, request: pb.InfoRequest, context) -> pb.InfoResponse:
        clf, config = self.classifier, self.config
        limits = pb.Limits(
            max_support=config.max_support, max_queries=config.max_queries, max_image_bytes=self._max_image_bytes,
            max_image_pixels=config.max_image_pixels, max_message_bytes=int(config.max_message_mb * MIB),
            handle_ttl_s=config.handle_ttl_s,
        )
        return pb.InfoResponse(
            job=clf.job.name, step=self.step, algorithm=clf.job.algorithm.name, model=clf.job.model.name,
            image_mode=clf.preprocessing.mode, image_size=list(clf.preprocessing.size), max_ways=clf.max_ways or 0,
            inner_steps=clf.inner_steps, limits=limits,
        )

    # -- inputs -------------------------------------------------------------------------------------------------------
    def _support(self, support) -> tuple[list[bytes], list[str]]:
        if len(support) > self.config.max_support:
            raise PredictionError(f"support: {len(support)} examples; this server takes at most {self.config.max_support} (max_support)")
        labels = []
        for i, example in enumerate(support):
            if not example.label:
                raise PredictionError(f"support[{i}]{_named_suffix(example.image)}: empty label")
            labels.append(example.label)
        return self._images([example.image for example in support], "support"), labels

    def _queries(self, queries) -> list[bytes]:
        if len(queries) > self.config.max_queries:
            raise PredictionError(f"queries: {len(queries)} images; this server takes at most {self.config.max_queries} per call (max_queries)")
        return self._images(queries, "queries")

    def _images(self, images, what: str) -> list[bytes]:
        """Checked against the size limits (the pixel count from the header, before anything is decoded)."""
        out = []
        for i, image in enumerate(images):
            source = f"{what}[{i}]{_named_suffix(image)}"
            data = image.data
            if not data:
                raise PredictionError(f"{source}: empty image")
            if len(data) > self._max_image_bytes:
                raise PredictionError(f"{source}: {len(data) / MIB:.1f} MB encoded; this server takes at most {self.config.max_image_mb:g} MB per image (max_image_mb)")
            self._check_pixels(data, source)
            out.append(named(data, source))
        return out

    def _check_pixels(self, data: bytes, source: str) -> None:
        try:
            open_image(data, source, self.config.max_image_pixels).close()  # the header only: `predict`'s rule
        except DataImportError as exc:
            raise PredictionError(str(exc)) from None

    def _task(self, handle: str) -> AdaptedTask:
        if not handle:
            raise PredictionError("handle: empty; Adapt returns one")
        try:
            return self.handles.get(handle)
        except KeyError:
            raise RpcStatus(
                grpc.StatusCode.NOT_FOUND,
                f"handle {handle[:8]}…: unknown, released or expired (handles expire {self.handles.ttl_s:g} s after their "
                "last use, or earlier when the server needs room); Adapt again",
            ) from None

    # -- the work -----------------------------------------------------------------------------------------------------
    def _adapt(self, classifier: FewShotClassifier, images: list[bytes], labels: list[str]) -> AdaptedTask:
        self.stats.add("computations", 1)
        return classifier.adapt(images, labels)

    def _classify(self, classifier: FewShotClassifier, task: AdaptedTask, images: list[bytes]) -> list[Prediction]:
        self.stats.add("computations", 1)
        return classifier.classify(task, images)

    @contextmanager
    def _compute_slot(self, context) -> Iterator[FewShotClassifier]:
        """Hold one of max_concurrency classifiers; wait no longer than the call's deadline or queue_timeout_s."""
        remaining = _time_remaining(context)
        self._check_deadline(context, "before its turn came", remaining)
        queue_timeout_s = self.config.queue_timeout_s
        self.stats.add("waiting", 1)
        try:
            classifier = self.compute_slots.acquire(queue_timeout_s if remaining is None else min(remaining, queue_timeout_s))
        finally:
            self.stats.add("waiting", -1)
        if classifier is None:
            if remaining is not None and remaining <= queue_timeout_s:
                raise RpcStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while waiting for a compute slot (server busy)")
            raise RpcStatus(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server busy: no compute slot free within {queue_timeout_s:g} s (queue_timeout_s); retry later",
            )
        try:
            if not context.is_active():
                raise RpcStatus(grpc.StatusCode.CANCELLED, "the call was cancelled while waiting")
            self._check_deadline(context, "while waiting for a compute slot")
            yield classifier
        finally:
            self.compute_slots.release(classifier)

    @staticmethod
    def _check_deadline(context, when: str, remaining: float | None = None) -> None:
        remaining = _time_remaining(context) if remaining is None else remaining
        if remaining is not None and remaining <= 0:
            raise RpcStatus(grpc.StatusCode.DEADLINE_EXCEEDED, f"the deadline passed {when}; nothing more was computed")


def _time_remaining(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > NO_DEADLINE_S else remaining


def _named_suffix(image: pb.Image) -> str:
    if not image.name:
        return ""
    name = image.name if len(image.name) <= MAX_NAME_CHARS else "…" + image.name[-MAX_NAME_CHARS:]
    return f" ({name})"


def _classify_response(task: AdaptedTask, predictions: list[Prediction]) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        labels=task.labels,
        predictions=[pb.Prediction(label=p.label, scores=[p.scores[label] for label in task.labels]) for p in predictions],
    )
