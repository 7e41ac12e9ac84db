"""Registered workflows, kept in Redis so every gateway serves them.

``{p}workflow:{id}`` holds a workflow's spec (the proto's bytes) and whether it is built in;
``{p}workflows`` is the set of ids and ``{p}workflow-builtins`` maps a built-in's name to its
id. An id is a hash of the spec's content, so a spec registered twice keeps its id and a
registered spec never changes: each gateway keeps the ones it has read in memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from diffusion.v1 import workflow_pb2
from services.common.errors import NotFound
from services.common.fleet_state import FleetState
from services.common.model_store import ModelStore
from services.gateway.workflows.checks import check
from services.gateway.workflows.parse import parse
from services.gateway.workflows.spec import Workflow, content_id


@dataclass(frozen=True)
class Registered:
    workflow_id: str
    spec: workflow_pb2.WorkflowSpec
    workflow: Workflow
    builtin: bool = False


class WorkflowRegistry:
    def __init__(self, fleet: FleetState, store: ModelStore) -> None:
        self.fleet = fleet
        self.store = store
        self._known: dict[str, Registered] = {}
        self._builtins: dict[str, Registered] = {}   # this gateway's, by name
        self._lock = threading.Lock()

    def register(self, spec: workflow_pb2.WorkflowSpec, builtin: bool = False,
                 field: str = "spec") -> Registered:
        """Checks ``spec`` (INVALID_ARGUMENT / NOT_FOUND naming its field) and keeps it."""
        workflow = parse(spec, field)
        check(workflow, self.store, field)
        entry = Registered(content_id(spec), spec, workflow, builtin)
        pipe = self.fleet.redis.pipeline()
        pipe.hset(self._key(entry.workflow_id), mapping={
            "spec": spec.SerializeToString(), "builtin": int(builtin)})
        pipe.sadd(self.fleet.key("workflows"), entry.workflow_id)
        if builtin:
            pipe.hset(self.fleet.key("workflow-builtins"), workflow.name, entry.workflow_id)
        pipe.execute()
        with self._lock:
            self._known[entry.workflow_id] = entry
            if builtin:
                self._builtins[workflow.name] = entry
        return entry

    def builtin(self, name: str) -> Registered:
        """One of this gateway's built-in workflows, by name."""
        with self._lock:
            return self._builtins[name]

    def get(self, workflow_id: str, field: str = "workflow_id") -> Registered:
        """A workflow by id, or a built-in by name; NOT_FOUND naming ``field``."""
        with self._lock:
            known = self._known.get(workflow_id) or self._builtins.get(workflow_id)
        if known is not None:
            return known
        raw = self.fleet.redis.hgetall(self._key(workflow_id))
        if not raw:
            raise NotFound(f"no workflow {workflow_id!r} (ListWorkflows lists them)",
                           field=field)
        fields = {k.decode(): v for k, v in raw.items()}  # type: ignore[union-attr]
        spec = workflow_pb2.WorkflowSpec.FromString(fields["spec"])
        entry = Registered(workflow_id, spec, parse(spec), fields["builtin"] == b"1")
        with self._lock:
            self._known[workflow_id] = entry
        return entry

    def ids(self) -> list[str]:
        members = self.fleet.redis.smembers(self.fleet.key("workflows"))
        found = {m.decode() for m in members}  # type: ignore[union-attr]
        with self._lock:
            found |= set(self._known)
        return sorted(found)

    def all(self) -> list[Registered]:
        """Every registered workflow, built-in ones first, then by name."""
        found = []
        for workflow_id in self.ids():
            try:
                found.append(self.get(workflow_id))
            except NotFound:
                continue   # removed meanwhile (a Redis restart)
        return sorted(found, key=lambda r: (not r.builtin, r.workflow.name, r.workflow_id))

    def _key(self, workflow_id: str) -> str:
        return self.fleet.key("workflow", workflow_id)
