from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Asset(_message.Message):
    __slots__ = ("provider_id", "asset_id", "title", "kind", "fields", "pseudonymized_fields", "offer_json", "description")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYMIZED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    OFFER_JSON_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    asset_id: str
    title: str
    kind: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    pseudonymized_fields: _containers.RepeatedScalarFieldContainer[str]
    offer_json: bytes
    description: str
    def __init__(self, provider_id: _Optional[str] = ..., asset_id: _Optional[str] = ..., title: _Optional[str] = ..., kind: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., pseudonymized_fields: _Optional[_Iterable[str]] = ..., offer_json: _Optional[bytes] = ..., description: _Optional[str] = ...) -> None: ...

class CatalogRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class CatalogReply(_message.Message):
    __slots__ = ("provider_id", "assets")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    assets: _containers.RepeatedCompositeFieldContainer[Asset]
    def __init__(self, provider_id: _Optional[str] = ..., assets: _Optional[_Iterable[_Union[Asset, _Mapping]]] = ...) -> None: ...

class AssetRequest(_message.Message):
    __slots__ = ("asset_id",)
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    def __init__(self, asset_id: _Optional[str] = ...) -> None: ...
