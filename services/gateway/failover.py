"""Re-placing a request whose replica died: which failures allow another attempt.

A request runs again from placement on (the same seed gives the same image) when an
attempt failed UNAVAILABLE and at least one replica it used no longer answers a health
check: such a replica is marked unreachable in the channel pool, so placement leaves it
out, and the next attempt lands on live replicas (or waits for one within the deadline;
with none, placement ends it UNAVAILABLE naming the role). A failure with every replica
alive (a replica refusing work, a bad input) is not retried: running it again would
meet the same answer.
"""

from __future__ import annotations

import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import ChannelPool
from services.common.errors import FleetError, Unavailable
from services.common.fleet_state import ReplicaInfo

log = logging.getLogger("dfleet.gateway")

MAX_ATTEMPTS = 3
PROBE_TIMEOUT_S = 3.0


class Failover:
    def __init__(self, channels: ChannelPool, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.channels = channels
        self.max_attempts = max_attempts

    def dead(self, replicas: list[ReplicaInfo]) -> list[ReplicaInfo]:
        """The replicas that do not answer a health check (each marked unreachable)."""
        found = []
        for replica in {r.address: r for r in replicas}.values():
            with self.channels.fresh(replica.address) as channel:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=PROBE_TIMEOUT_S)
                except grpc.RpcError as err:
                    if err.code() in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                        self.channels.mark_failed(replica.address)
                        found.append(replica)
        return found

    def replaceable(self, error: BaseException, used: list[ReplicaInfo], attempt: int,
                    deadline: float | None) -> list[ReplicaInfo]:
        """The dead replicas to place around, or [] when the attempt is not to be repeated."""
        if not isinstance(error, Unavailable) or attempt >= self.max_attempts:
            return []
        if deadline is not None and time.monotonic() >= deadline:
            return []
        return self.dead(used)


def roles_of(replicas: list[ReplicaInfo]) -> str:
    return ",".join(sorted({r.role for r in replicas}))


def unavailable(error: FleetError, dead: list[ReplicaInfo]) -> FleetError:
    """The error to end with when the request could not be re-placed: placement's own
    (it names the role with no live replica), and which replicas had died before."""
    if not dead:
        return error
    return Unavailable(f"{error.message} (after re-placing around dead {roles_of(dead)} "
                       f"replica {', '.join(r.replica_id for r in dead)})", field=error.field)
