from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Member(_message.Message):
    __slots__ = ("member_id", "name", "role", "verify_key")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_KEY_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    name: str
    role: str
    verify_key: bytes
    def __init__(self, member_id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., verify_key: _Optional[bytes] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    def __init__(self, nonce: _Optional[str] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("server", "caller", "nonce", "software_version", "server_time_unix_ms")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    server: Member
    caller: Member
    nonce: str
    software_version: str
    server_time_unix_ms: int
    def __init__(self, server: _Optional[_Union[Member, _Mapping]] = ..., caller: _Optional[_Union[Member, _Mapping]] = ..., nonce: _Optional[str] = ..., software_version: _Optional[str] = ..., server_time_unix_ms: _Optional[int] = ...) -> None: ...
