"""Secrets from files, never from command lines or logs.

A container platform hands secrets to a process as files (Docker and Kubernetes mount
them under ``/run/secrets``); a command line is visible to every user of the machine
(``ps``) and an environment variable ends up in crash dumps and ``docker inspect``. So a
node's settings take each value from a file too, two ways:

- ``QDSPACE_<FIELD>_FILE`` (``QDSPACE_DB_URL_FILE=/run/secrets/db``): the variable names
  a file whose contents is the value (one trailing newline dropped), the convention of
  the official PostgreSQL and MySQL images;
- the secrets directory (pydantic-settings' ``secrets_dir``): a file named
  ``qdspace_<field>`` in ``/run/secrets`` (or ``$QDSPACE_SECRETS_DIR``) when it exists.

The order, strongest first: ``QDSPACE_<FIELD>``, ``QDSPACE_<FIELD>_FILE``, the secrets
directory, ``node.json``. Giving both ``QDSPACE_X`` and ``QDSPACE_X_FILE`` is an error
(which one was meant?), as is a ``_FILE`` naming a file that cannot be read.

Database URLs are logged and echoed only through `qdspace.connector.storage.safe_url`
(passwords as ``***``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from qdspace.node.errors import ConfigError

FILE_SUFFIX = "_FILE"
#: where container platforms mount secrets; used when the directory exists
DEFAULT_SECRETS_DIR = Path("/run/secrets")
SECRETS_DIR_ENV = "QDSPACE_SECRETS_DIR"
#: a secret file larger than this is a mistake (a key store, a log), not a value
MAX_SECRET_BYTES = 64 << 10


def read_secret_file(path: Path, variable: str) -> str:
    """The contents of the file ``variable`` names, one trailing newline dropped."""
    try:
        if path.stat().st_size > MAX_SECRET_BYTES:
            raise ConfigError(f"${variable}: {path} is larger than {MAX_SECRET_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"${variable} names {path}, which does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"${variable} names {path}, which is a directory") from None
    except PermissionError:
        raise ConfigError(f"${variable} names {path}, which this user cannot read") from None
    except UnicodeDecodeError:
        raise ConfigError(f"${variable}: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"${variable}: cannot read {path}: {exc.strerror}") from None
    return text[:-1] if text.endswith("\n") else text


def secrets_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """``$QDSPACE_SECRETS_DIR`` (which must exist), else ``/run/secrets`` if it exists."""
    chosen = environ.get(SECRETS_DIR_ENV)
    if chosen:
        path = Path(chosen)
        if not path.is_dir():
            raise ConfigError(f"${SECRETS_DIR_ENV} names {path}, which is no directory")
        return path
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None


class FileEnvSource(PydanticBaseSettingsSource):
    """Settings from files named by ``<PREFIX><FIELD>_FILE`` environment variables."""

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str] = os.environ
    ) -> None:
        super().__init__(settings_cls)
        self.prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()
        self.environ = {k.upper(): v for k, v in environ.items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = f"{self.prefix}{field_name.upper()}{FILE_SUFFIX}"
        path = self.environ.get(variable)
        if not path:
            return None, field_name, False
        if f"{self.prefix}{field_name.upper()}" in self.environ:
            raise ConfigError(f"give ${self.prefix}{field_name.upper()} or ${variable}, not both")
        value = read_secret_file(Path(path), variable)
        if not self.field_is_complex(field):
            return value, field_name, False
        try:
            return json.loads(value), field_name, True
        except ValueError:
            raise ConfigError(f"${variable}: {path} is not JSON, as {field_name} needs") from None

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                found[key] = value
        return found
