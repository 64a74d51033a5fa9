from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    __slots__ = ("request_id", "model_name", "row", "class_name", "class_index", "number")
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
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., row: _Optional[int] = ..., class_name: _Optional[str] = ..., class_index: _Optional[int] = ..., number: _Optional[float] = ...) -> None: ...

class SendLabelsRequest(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class LabelResult(_message.Message):
    __slots__ = ("outcome", "detail")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    outcome: LabelOutcome
    detail: str
    def __init__(self, outcome: _Optional[_Union[LabelOutcome, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class SendLabelsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LabelResult]
    def __init__(self, results: _Optional[_Iterable[_Union[LabelResult, _Mapping]]] = ...) -> None: ...

class StreamLabelsResponse(_message.Message):
    __slots__ = ("received", "matched", "unknown_id", "expired", "duplicate", "invalid")
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
    def __init__(self, received: _Optional[int] = ..., matched: _Optional[int] = ..., unknown_id: _Optional[int] = ..., expired: _Optional[int] = ..., duplicate: _Optional[int] = ..., invalid: _Optional[int] = ...) -> None: ...
