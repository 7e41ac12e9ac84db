"""Typed controller settings: one :class:`NodeSettings` per model node, from one YAML file.

The file (``deploy/controller.example.yaml``; the Helm chart renders the same shape
into the controller's ConfigMap)::

    tick_s: 1.0                 # optional, flags override
    namespace: diffusion        # default namespace of every node
    defaults:                   # optional, merged under every node
      target_depth_per_replica: 4
    nodes:
      - name: denoiser-tiny-sd
        role: denoiser
        model: tiny-sd
        deployment: dfleet-denoiser-tiny-sd
        min_replicas: 0
        max_replicas: 8

Keys are the field names below; an unknown key is an error, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROLES = ("gateway", "text_encoder", "image_encoder", "ar_embed", "denoiser", "controlnet", "vae",
         "lora_cache")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ConfigError(ValueError):
    """The controller's configuration is invalid; permanent, never retried."""


def _setting(doc: str, default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"help": doc, "min": lo, "max": hi})


def _required(doc: str) -> Any:
    return field(metadata={"help": doc})


@dataclass(frozen=True)
class NodeSettings:
    """How one model node (a role serving one model) scales, and which Deployment it drives."""

    name: str = _required("unique name of the node, used in logs and Events")
    role: str = _required("service role: one of " + ", ".join(ROLES))
    model: str = _required("model name; the node's queue is the depth field 'role:model'")
    deployment: str = _setting("Deployment (apps/v1) to scale; empty = the node name", "")
    namespace: str = _setting("namespace of the Deployment; empty = the file's namespace", "")
    queues: tuple[str, ...] = _setting(
        "depth fields this node serves (a co-located pod serves several); the node's "
        "depth is the largest of them; empty = ('role:model',)", ())
    min_replicas: int = _setting("never fewer replicas; 0 allows scale to zero", 1, 0, 1000)
    max_replicas: int = _setting("never more replicas", 4, 1, 1000)
    target_depth_per_replica: float = _setting(
        "queue depth (tasks waiting + running) one replica should carry", 4.0, 0.01, 1e6)
    activation_threshold: int = _setting(
        "queue depth at which a node at zero replicas gets its first one", 1, 1, 1_000_000)
    tolerance: float = _setting(
        "relative band around the target in which the replica count is left alone",
        0.1, 0.0, 0.99)
    up_stabilization_s: float = _setting(
        "a larger count must be recommended for this long before scaling up", 3.0, 0, 3600)
    down_stabilization_s: float = _setting(
        "a smaller count must be recommended for this long before scaling down",
        60.0, 0, 86400)
    idle_to_zero_s: float = _setting(
        "with min_replicas 0, one replica with an empty queue for this long goes to zero",
        120.0, 0, 86400)

    def __post_init__(self) -> None:
        if not self.deployment:
            object.__setattr__(self, "deployment", self.name)
        if not self.queues:
            object.__setattr__(self, "queues", (f"{self.role}:{self.model}",))
        else:
            object.__setattr__(self, "queues", tuple(self.queues))
        self.validate()

    def validate(self) -> None:
        where = f"node {self.name!r}"
        if not self.name or not self.model:
            raise ConfigError(f"{where}: name and model must be set")
        if self.role not in ROLES:
            raise ConfigError(f"{where}: role {self.role!r} is not one of {', '.join(ROLES)}")
        for what in ("deployment", "namespace"):
            value = getattr(self, what)
            if value and (len(value) > 63 or not _DNS_LABEL.match(value)):
                raise ConfigError(f"{where}: {what} {value!r} is not a DNS-1123 label")
        for f in dataclasses.fields(self):
            _check_limits(where, f, getattr(self, f.name))
        if self.min_replicas > self.max_replicas:
            raise ConfigError(f"{where}: min_replicas ({self.min_replicas}) must not exceed "
                              f"max_replicas ({self.max_replicas})")

    @property
    def key(self) -> str:
        """``role:model``: how the node is labelled in metrics."""
        return f"{self.role}:{self.model}"


@dataclass(frozen=True)
class ControllerSettings:
    """The whole controller: its loop and every node it scales."""

    nodes: tuple[NodeSettings, ...] = _required("model nodes to scale")
    tick_s: float = _setting("seconds between ticks", 1.0, 0.01, 3600)
    namespace: str = _setting("default namespace of nodes that name none", "default")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "nodes":
                _check_limits("controller", f, getattr(self, f.name))
        if not self.nodes:
            raise ConfigError("controller: nodes must list at least one model node")
        seen_names: dict[str, NodeSettings] = {}
        seen_targets: dict[tuple[str, str], NodeSettings] = {}
        for node in self.nodes:
            if node.name in seen_names:
                raise ConfigError(f"node name {node.name!r} is used twice")
            target = (node.namespace or self.namespace, node.deployment)
            if target in seen_targets:
                other = seen_targets[target].name
                raise ConfigError(f"nodes {other!r} and {node.name!r} both scale deployment "
                                  f"{target[0]}/{target[1]}; list both queues in one node")
            seen_names[node.name] = node
            seen_targets[target] = node

    def namespace_of(self, node: NodeSettings) -> str:
        return node.namespace or self.namespace


def _check_limits(where: str, f: dataclasses.Field[Any], value: Any) -> None:
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is None and hi is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {f.name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {f.name} must be finite, got {value!r}")
    if f.type in (int, "int") and not isinstance(value, int):
        raise ConfigError(f"{where}: {f.name} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{where}: {f.name}={value!r} is outside {lo}..{hi}")


def _build(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def settings_from_dict(raw: dict[str, Any], **overrides: Any) -> ControllerSettings:
    """Builds settings from the parsed YAML shape; ``overrides`` (non-None) win over the file."""
    if not isinstance(raw, dict):
        raise ConfigError("the controller config must be a mapping")
    raw = dict(raw)
    defaults = raw.pop("defaults", None) or {}
    node_list = raw.pop("nodes", None) or []
    if not isinstance(defaults, dict) or not isinstance(node_list, list):
        raise ConfigError("'defaults' must be a mapping and 'nodes' a list")
    nodes = []
    for i, entry in enumerate(node_list):
        if not isinstance(entry, dict):
            raise ConfigError(f"nodes[{i}] must be a mapping")
        merged = {**defaults, **entry}
        if "queues" in merged:
            merged["queues"] = tuple(merged["queues"] or ())
        nodes.append(_build(NodeSettings, merged, f"nodes[{i}] ({entry.get('name', '?')})"))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return _build(ControllerSettings, {**raw, "nodes": tuple(nodes)}, "controller")  # type: ignore[no-any-return]


def load_config(path: str | Path, **overrides: Any) -> ControllerSettings:
    """Reads the YAML file at ``path``; raises :class:`ConfigError` naming what is wrong."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read controller config {path}: {exc}") from exc
    return settings_from_dict(raw or {}, **overrides)
