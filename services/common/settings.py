"""Typed service settings read from flags and ``DFLEET_*`` environment variables.

Each service declares one dataclass deriving from :class:`ServiceSettings`;
every field has a ``help`` in its metadata, which becomes the flag's help.
Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound="ServiceSettings")


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

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} is outside 0..65535")
        if self.heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s={self.heartbeat_s} must be positive")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads={self.torch_threads} must be >= 0")

    def as_log_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(kind: Any, raw: str) -> Any:
    if kind in (bool, "bool"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    return raw


def parse_settings(cls: type[T], role: str, argv: list[str] | None = None) -> T:
    """Builds ``cls`` from ``argv`` and ``DFLEET_<FIELD>`` variables.

    Bad input raises SystemExit with argparse's message, naming the setting.
    """
    parser = argparse.ArgumentParser(prog=f"python -m services.{role}",
                                     description=(cls.__doc__ or "").strip())
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        env = "DFLEET_" + f.name.upper()
        default = os.environ.get(env)
        kind = f.type
        if kind in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction,
                                help=f"{f.metadata.get('help', '')} (env {env})")
        else:
            parser.add_argument(flag, dest=f.name, default=None,
                                help=f"{f.metadata.get('help', '')} (env {env})")
        if default is not None:
            parser.set_defaults(**{f.name: _convert(kind, default)})
    args = parser.parse_args(argv)
    values = {}
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name)
        if raw is None:
            continue
        values[f.name] = _convert(f.type, raw) if isinstance(raw, str) else raw
    try:
        settings = cls(**values)
        settings.validate()
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if not settings.replica_id:
        settings.replica_id = f"{role}-{uuid.uuid4().hex[:8]}"
    return settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"request_id": ...}`` is carried along."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname,
                 "logger": record.name, "msg": record.getMessage()}
        for key in ("request_id", "role", "model", "replica_id"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
