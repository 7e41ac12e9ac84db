"""Typed service settings read from flags and ``DFLEET_*`` environment variables.

Each service declares one dataclass deriving from :class:`ServiceSettings`;
every field has a ``help`` in its metadata, which becomes the flag's help.
Precedence: flag > environment variable > default. Values are parsed and
type-checked by pydantic-settings: a bad value (``--port abc``,
``DFLEET_PORT=abc``, a boolean that is not one of true/false/1/0/yes/no/on/off)
stops the process with one line naming the setting, where it came from and
the value. Secrets (URL passwords, fields named like tokens) are masked
wherever settings are logged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

T = TypeVar("T", bound="ServiceSettings")
ENV_PREFIX = "DFLEET_"
SECRET_FIELD_WORDS = ("password", "token", "secret", "credential")
MASK = "***"


def setting(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class ServiceSettings:
    """What every service process needs."""

    host: str = setting("address to bind", default="127.0.0.1")
    port: int = setting("port to bind; 0 picks a free one", default=0)
    advertise_host: str = setting("host other services should dial; default: host", default="")
    models_dir: str = setting("folder of diffusers-format model folders", default="models")
    redis_url: str = setting("Redis for heartbeats and queue depth; empty = none", default="")
    replica_id: str = setting("unique id of this replica; default: random", default="")
    heartbeat_s: float = setting("seconds between heartbeats", default=2.0)
    torch_threads: int = setting("torch intra-op threads; 0 = torch default", default=0)
    inline_max_bytes: int = setting("tensors up to this size travel inline", default=150_000)
    lease_ttl_s: float = setting("seconds a tensor lease lives unless released", default=120.0)
    log_level: str = setting("logging level", default="INFO")
    port_file: str = setting("write the bound port to this file once serving", default="")
    metrics_port: int = setting("serve Prometheus /metrics over HTTP on this port; 0 picks a "
                                "free one, -1 = off", default=-1)
    tls_cert: str = setting("PEM certificate (chain) of this process; with tls_key and tls_ca "
                            "turns on TLS, mutual between services; empty = plaintext",
                            default="")
    tls_key: str = setting("PEM private key of tls_cert", default="")
    tls_ca: str = setting("PEM CA that signs every fleet member's certificate", default="")
    tls_server_name: str = setting("name peers' certificates are checked against",
                                   default="dfleet.internal")

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} is outside 0..65535")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port={self.metrics_port} is outside -1..65535")
        if self.heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s={self.heartbeat_s} must be positive")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads={self.torch_threads} must be >= 0")
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"log_level={self.log_level!r} is not a logging level")
        from services.common.tls import TlsFiles

        TlsFiles.from_settings(self)   # all three files or none, each readable

    def as_log_dict(self) -> dict[str, Any]:
        """The settings as logged: URL passwords and secret-named fields masked."""
        return {name: mask_secret(name, value)
                for name, value in dataclasses.asdict(self).items()}


def mask_url_password(url: str) -> str:
    """``redis://user:pw@host:6379/0`` -> ``redis://user:***@host:6379/0``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def mask_secret(name: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    if any(word in name.lower() for word in SECRET_FIELD_WORDS):
        return MASK
    return mask_url_password(value)


class _EnvSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      case_sensitive=False, env_ignore_empty=False)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"setting {f.name} has no default")


def _settings_model(cls: type[ServiceSettings]) -> type[BaseSettings]:
    """A pydantic-settings model with the dataclass's fields, reading ``DFLEET_*``."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], Field(default=_default(f), description=f.metadata.get("help")))
        for f in dataclasses.fields(cls)}
    return create_model(f"{cls.__name__}Source", __base__=_EnvSettings, **fields)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _build_parser(cls: type[ServiceSettings], role: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m services.{role}",
                                     description=(cls.__doc__ or "").strip())
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        env = ENV_PREFIX + f.name.upper()
        default = mask_secret(f.name, _default(f))
        text = f"{f.metadata.get('help', '')} (default: {default!r}; env {env})"
        if hints[f.name] is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, help=text,
                                action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, help=text,
                                metavar=hints[f.name].__name__.upper())
    return parser


def _describe_error(error: ValidationError, given: dict[str, Any]) -> str:
    first = error.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "?"
    source = flag_name(name) if name in given else ENV_PREFIX + name.upper()
    return (f"setting {name} (from {source}): {first['input']!r} is invalid: "
            f"{first['msg'].lower()}")


def parse_settings(cls: type[T], role: str, argv: list[str] | None = None) -> T:
    """Builds ``cls`` from ``argv`` and ``DFLEET_<FIELD>`` variables.

    A bad value or combination exits (code 2) with one line naming the setting.
    """
    parser = _build_parser(cls, role)
    args = parser.parse_args(argv)
    given = {name: value for name, value in vars(args).items() if value is not None}
    try:
        parsed = _settings_model(cls)(**given)
    except ValidationError as error:
        _exit(parser, _describe_error(error, given))
    try:
        settings = cls(**parsed.model_dump())
        settings.validate()
    except (TypeError, ValueError) as exc:
        _exit(parser, f"bad settings: {exc}")
    if not settings.replica_id:
        settings.replica_id = f"{role}-{uuid.uuid4().hex[:8]}"
    return settings


def _exit(parser: argparse.ArgumentParser, message: str) -> typing.NoReturn:
    print(f"{parser.prog}: {message}", file=sys.stderr)
    raise SystemExit(2)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"request_id": ...}`` is carried along.

    Inside a sampled trace span the line also carries ``trace_id`` and ``span_id``
    (W3C hex), so a log line leads to its trace.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname,
                 "logger": record.name, "msg": record.getMessage()}
        for key in ("request_id", "role", "model", "replica_id"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        entry.update(_trace_ids())
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _trace_ids() -> dict[str, str]:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
