"""Connector configuration files (JSON or YAML): what to read and how it maps to QDM.

One pydantic model per connector; a file is validated whole when loaded and a mistake
is reported with the file and the setting's path. :func:`check_elements` then holds
every mapping against the node's data dictionary, so a typo in an element name or an
unknown unit stops the connector at start instead of rejecting every reading later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from qdspace.connector.dictionary import DataDictionary, UnitDomain
from qdspace.connector.errors import ConnectorError, DictionaryError
from qdspace.connector.ingest import KINDS, charset_of


class ConnectorConfigError(ConnectorError, ValueError):
    """A connector configuration file that cannot be used: which file, which setting, why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Context(_Strict):
    """Production context a reading is stored with: fixed, or read from a source."""

    batch_id: str | None = Field(default=None, max_length=64)
    order_id: str | None = Field(default=None, max_length=64)


class OpcuaNode(Context):
    node_id: str = Field(min_length=1, max_length=256)
    element: str = Field(min_length=1)
    unit: str = Field(default="", max_length=16)
    equipment: str = Field(min_length=1, max_length=64)
    #: node ids whose current value is the batch / order a reading belongs to
    batch_id_node: str | None = None
    order_id_node: str | None = None
    #: store a reading without a source time under the server's time (a server that sets
    #: none); else such a reading is refused: each re-subscription would store it again
    server_time: bool = False


class OpcuaSecurity(_Strict):
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    policy: Literal["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = (
        "Basic256Sha256"
    )
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None

    @model_validator(mode="after")
    def _keys(self) -> OpcuaSecurity:
        if self.mode != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"mode {self.mode} needs certificate and private_key")
        return self


class OpcuaConfig(_Strict):
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    security: OpcuaSecurity = OpcuaSecurity()
    application_uri: str = "urn:qdspace:connector"
    publishing_interval_ms: int = Field(default=500, ge=10, le=60_000)
    reconnect_s: float = Field(default=2.0, gt=0, le=600)
    #: read the server's history for the gap after an outage (when it keeps history)
    history: bool = True
    #: how far back a backfill reaches when nothing of a node is stored yet
    backfill_max_s: float = Field(default=3600.0, ge=0)
    #: a backfill reads history again after this long while reads bring more (0: once)
    history_settle_s: float = Field(default=0.5, ge=0, le=60)
    timeout_s: float = Field(default=4.0, gt=0, le=120)
    #: a JSON file where the connector keeps how far it stored each node (relative to the
    #: configuration file): the backfill after a restart starts there (`opcua_marks`)
    state_file: Path | None = None
    nodes: list[OpcuaNode] = Field(min_length=1)


class MqttTopic(Context):
    topic: str = Field(min_length=1, max_length=256)
    element: str = Field(min_length=1)
    unit: str = Field(default="", max_length=16)
    equipment: str | None = Field(default=None, max_length=64)
    #: take the equipment from this level of the topic (0-based) instead
    equipment_level: int | None = Field(default=None, ge=0)
    #: Sparkplug B: the metric (by name) of the payloads on these topics
    metric: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _equipment(self) -> MqttTopic:
        if (self.equipment is None) == (self.equipment_level is None):
            raise ValueError("give equipment or equipment_level (one of them)")
        return self


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(default="qdspace-connector", min_length=1, max_length=64)
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    qos: Literal[0, 1] = 1
    #: MQTT 5 lets the connector tell the broker the largest packet it takes (a larger
    #: message is dropped at the broker, never read here); 3.1.1 for a broker without 5
    protocol: Literal["mqtt5", "mqtt311"] = "mqtt5"
    #: a JSON object per message, or Sparkplug B protobuf payloads (metrics by name)
    payload_format: Literal["json", "sparkplug_b"] = "json"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    #: first wait before reconnecting (doubled per failed try, up to 16 times as long)
    reconnect_s: float = Field(default=2.0, gt=0, le=600)
    #: payload fields: value, unit, time and context (a JSON object per message)
    value_field: str = "value"
    unit_field: str = "unit"
    time_field: str = "ts"
    batch_field: str = "batch_id"
    order_field: str = "order_id"
    topics: list[MqttTopic] = Field(min_length=1)

    @model_validator(mode="after")
    def _metrics(self) -> MqttConfig:
        sparkplug = self.payload_format == "sparkplug_b"
        for i, t in enumerate(self.topics):
            if sparkplug and t.metric is None:
                raise ValueError(f"topics.{i}: sparkplug_b payloads: give the metric it maps")
            if not sparkplug and t.metric is not None:
                raise ValueError(f"topics.{i}: metric is for payload_format sparkplug_b")
        return self


class FolderRule(_Strict):
    pattern: str = Field(min_length=1)
    kind: str

    @model_validator(mode="after")
    def _kind(self) -> FolderRule:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not a QDM kind ({', '.join(KINDS)})")
        return self


class FolderConfig(_Strict):
    watch: Path
    done: Path | None = None
    failed: Path | None = None
    #: which files are which kind, first match wins (fnmatch patterns on the file name)
    files: list[FolderRule] = Field(min_length=1)
    #: a file is read once its size and time have not changed for this long
    settle_s: float = Field(default=1.0, ge=0, le=3600)
    #: a file whose last byte is no newline may still be being written (an exporter that
    #: paused mid-line): it is read only once unchanged this long, its last line then
    #: refused as cut off (or, with ``unended_last_line: store``, stored as a row)
    unended_s: float = Field(default=60.0, ge=0, le=86400)
    #: what becomes of such a last line once ``unended_s`` has passed: "store" is for an
    #: exporter that never ends its last line (its files are read ``unended_s`` late)
    unended_last_line: Literal["refuse", "store"] = "refuse"
    charset: str | None = None

    @field_validator("charset")
    @classmethod
    def _charset(cls, charset: str | None) -> str | None:
        # checked here, not at the first file: a charset the reader cannot use would
        # send every export to failed/ (and the ledger would then skip them when resent)
        charset_of(charset)
        return charset


C = TypeVar("C", bound=BaseModel)


def read_config(path: Path, model: type[C]) -> C:
    """Load ``path`` (JSON, or YAML by suffix) as ``model``; relative paths in it are
    taken relative to the file's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConnectorConfigError(f"{path}: cannot read: {exc.strerror}") from None
    data = _parse(path, text)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "-"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConnectorConfigError(f"{path}: {where}: {first['msg']}{more}") from None
    return _relative_to(config, path.parent.resolve())


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConnectorConfigError(f"{path}: YAML needs PyYAML, or use JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConnectorConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConnectorConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None


def _relative_to(config: C, base: Path) -> C:
    updates: dict[str, Any] = {}
    for name, value in config:
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = base / value
        elif isinstance(value, BaseModel):
            updates[name] = _relative_to(value, base)
    return config.model_copy(update=updates) if updates else config


def check_elements(
    path: Path, mappings: Sequence[OpcuaNode | MqttTopic], dictionary: DataDictionary
) -> None:
    """Every mapping names a measured element of the dictionary and a unit it converts."""
    for i, m in enumerate(mappings):
        name = m.node_id if isinstance(m, OpcuaNode) else m.topic
        where = f"{path}: mapping {i + 1} ({name})"
        try:
            element = dictionary.element(m.element)
        except DictionaryError as exc:
            raise ConnectorConfigError(f"{where}: element: {exc}") from None
        if not isinstance(element.domain, UnitDomain):
            raise ConnectorConfigError(f"{where}: element: {element.name} is not measured")
        if m.unit and element.domain._conversion(m.unit) is None:
            raise ConnectorConfigError(f"{where}: unit: {m.unit!r} is not known for {element.name}")
