"""A step ring over a gRPC stream: the opener offers, the peer takes or refuses; the end.

The opener (a denoiser opening a ControlNet stream or a CFG pass) puts a
:class:`RingOffer` in its open message when the peer shares its host; the peer
connects and answers with a :class:`RingAnswer` before anything else; the opener
then accepts the connection. Every way of not using a ring is counted in
``dfleet_transport_fallbacks_total`` by reason. When the ring's socket closes
under an end, the stream's status says why.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from diffusion.v1 import tensor_pb2
from services.common.errors import FleetError, Unavailable, from_rpc_error
from services.common.transport import metrics
from services.common.transport.errors import TransportError
from services.common.transport.ring_socket import SUPPORTED, RingListener, connect
from services.common.transport.ring_stream import RingStream

ACCEPT_TIMEOUT_S = 30.0  # the peer connected before it answered: this is only a safety net
STATUS_GRACE_S = 5.0     # how long a closed ring waits for the stream's status

log = logging.getLogger(__name__)


def offer_ring(enabled: bool, peer: tensor_pb2.PeerInfo | None,
               own_peer: tensor_pb2.PeerInfo, role: str) -> RingListener | None:
    """A listener to offer to ``peer``, or None (counted) when the steps must use the stream."""
    if not enabled:
        reason = "ring_disabled"
    elif peer is None or not peer.host_id or peer.host_id != own_peer.host_id:
        reason = "ring_other_host"
    elif not SUPPORTED:
        reason = "ring_unsupported"
    else:
        try:
            return RingListener()
        except OSError as e:
            log.warning("cannot offer a step ring (%s); steps go on the stream", e)
            reason = "ring_error"
    metrics.FALLBACKS.labels(role, reason).inc()
    return None


def offer_message(listener: RingListener) -> tensor_pb2.RingOffer:
    return tensor_pb2.RingOffer(socket=listener.name, token=listener.token)


def settle_offer(listener: RingListener, answer: tensor_pb2.RingAnswer, peer_name: str,
                 role: str, timeout: float = ACCEPT_TIMEOUT_S) -> RingStream | None:
    """The ring once the peer took it; None (counted) when it refused. Closes the listener.
    TimeoutError when the peer took it but never connected."""
    try:
        if not answer.accepted:
            metrics.FALLBACKS.labels(role, "ring_refused").inc()
            log.info("%s refused the step ring: %s", peer_name, answer.reason)
            return None
        return RingStream(listener.accept(timeout), role=role)
    finally:
        listener.close()


def take_offer(offer: tensor_pb2.RingOffer, enabled: bool, role: str
               ) -> tuple[RingStream | None, tensor_pb2.RingAnswer]:
    """The peer's side: the connected ring (or None) and the answer to send first."""
    if not enabled:
        return None, tensor_pb2.RingAnswer(accepted=False, reason="step rings are off here")
    try:
        sock = connect(offer.socket, offer.token)
    except TransportError as e:
        log.warning("ring offer refused: %s", e)
        return None, tensor_pb2.RingAnswer(accepted=False, reason=str(e))
    log.debug("steps through ring socket %s", offer.socket)
    return RingStream(sock, role=role), tensor_pb2.RingAnswer(accepted=True)


def closed_ring_error(call: Any, closed: Exception, peer_name: str,
                      grace_s: float = STATUS_GRACE_S) -> FleetError:
    """Why a ring's socket closed: the stream's status when the peer sent one in time
    (its error, or UNAVAILABLE from a broken connection), else UNAVAILABLE naming it."""
    try:
        error = call.exception(timeout=grace_s)
    except Exception:  # noqa: BLE001 - no status in time: the peer is gone
        error = None
    if isinstance(error, grpc.RpcError):
        return from_rpc_error(error, peer_name)
    return Unavailable(f"{peer_name}: its step ring closed ({closed})")
