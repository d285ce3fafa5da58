from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("data", "name")
    DATA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    name: str
    def __init__(self, data: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class SupportExample(_message.Message):
    __slots__ = ("image", "label")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    image: Image
    label: str
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., label: _Optional[str] = ...) -> None: ...

class AdaptAndClassifyRequest(_message.Message):
    __slots__ = ("support", "queries")
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    support: _containers.RepeatedCompositeFieldContainer[SupportExample]
    queries: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, support: _Optional[_Iterable[_Union[SupportExample, _Mapping]]] = ..., queries: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class AdaptRequest(_message.Message):
    __slots__ = ("support",)
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    support: _containers.RepeatedCompositeFieldContainer[SupportExample]
    def __init__(self, support: _Optional[_Iterable[_Union[SupportExample, _Mapping]]] = ...) -> None: ...

class AdaptResponse(_message.Message):
    __slots__ = ("handle", "labels", "expires_in_s")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    handle: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    expires_in_s: float
    def __init__(self, handle: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., expires_in_s: _Optional[float] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("handle", "queries")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    handle: str
    queries: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, handle: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "scores")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    label: str
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label: _Optional[str] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("labels", "predictions")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    def __init__(self, handle: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_support", "max_queries", "max_image_bytes", "max_image_pixels", "max_message_bytes", "handle_ttl_s")
    MAX_SUPPORT_FIELD_NUMBER: _ClassVar[int]
    MAX_QUERIES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HANDLE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    max_support: int
    max_queries: int
    max_image_bytes: int
    max_image_pixels: int
    max_message_bytes: int
    handle_ttl_s: float
    def __init__(self, max_support: _Optional[int] = ..., max_queries: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., handle_ttl_s: _Optional[float] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("job", "step", "algorithm", "model", "image_mode", "image_size", "max_ways", "inner_steps", "limits")
    JOB_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MODE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAYS_FIELD_NUMBER: _ClassVar[int]
    INNER_STEPS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    job: str
    step: int
    algorithm: str
    model: str
    image_mode: str
    image_size: _containers.RepeatedScalarFieldContainer[int]
    max_ways: int
    inner_steps: int
    limits: Limits
    def __init__(self, job: _Optional[str] = ..., step: _Optional[int] = ..., algorithm: _Optional[str] = ..., model: _Optional[str] = ..., image_mode: _Optional[str] = ..., image_size: _Optional[_Iterable[int]] = ..., max_ways: _Optional[int] = ..., inner_steps: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...
