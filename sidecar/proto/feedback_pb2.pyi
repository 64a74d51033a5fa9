from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class LabelOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_OUTCOME_UNSPECIFIED: _ClassVar[LabelOutcome]
    MATCHED: _ClassVar[LabelOutcome]
    UNKNOWN_ID: _ClassVar[LabelOutcome]
    EXPIRED: _ClassVar[LabelOutcome]
    DUPLICATE: _ClassVar[LabelOutcome]
    INVALID: _ClassVar[LabelOutcome]

LABEL_OUTCOME_UNSPECIFIED: LabelOutcome
MATCHED: LabelOutcome
UNKNOWN_ID: LabelOutcome
EXPIRED: LabelOutcome
DUPLICATE: LabelOutcome
INVALID: LabelOutcome

class Label(_message.Message):
    __slots__ = ("class_index", "class_name", "model_name", "number", "request_id", "row")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    row: int
    class_name: str
    class_index: int
    number: float
    def __init__(
        self,
        request_id: str | None = ...,
        model_name: str | None = ...,
        row: int | None = ...,
        class_name: str | None = ...,
        class_index: int | None = ...,
        number: float | None = ...,
    ) -> None: ...

class SendLabelsRequest(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Iterable[Label | _Mapping] | None = ...) -> None: ...

class LabelResult(_message.Message):
    __slots__ = ("detail", "outcome")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    outcome: LabelOutcome
    detail: str
    def __init__(
        self, outcome: LabelOutcome | str | None = ..., detail: str | None = ...
    ) -> None: ...

class SendLabelsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LabelResult]
    def __init__(self, results: _Iterable[LabelResult | _Mapping] | None = ...) -> None: ...

class StreamLabelsResponse(_message.Message):
    __slots__ = ("duplicate", "expired", "invalid", "matched", "received", "unknown_id")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    received: int
    matched: int
    unknown_id: int
    expired: int
    duplicate: int
    invalid: int
    def __init__(
        self,
        received: int | None = ...,
        matched: int | None = ...,
        unknown_id: int | None = ...,
        expired: int | None = ...,
        duplicate: int | None = ...,
        invalid: int | None = ...,
    ) -> None: ...
