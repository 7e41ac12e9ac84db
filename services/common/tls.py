"""TLS on every gRPC port, mutual TLS between the fleet's services.

Every process of a fleet holds a certificate signed by the fleet's CA (PEM files,
e.g. a Kubernetes Secret mounted as a volume; ``dfleet certs DIR`` writes a
development set). Internal ports require a client certificate signed by that CA,
so only fleet peers can call them; the gateway's public port serves TLS to
anyone and leaves authentication to its tokens.

Peers are dialled by whatever address they heartbeat (an IP, a pod name), so
channels check the peer's certificate against one fleet-wide name
(``tls_server_name``, default ``dfleet.internal``) instead of the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

FLEET_SERVER_NAME = "dfleet.internal"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this process's certificate chain and key, and the fleet's CA."""

    cert_file: str
    key_file: str
    ca_file: str
    server_name: str = FLEET_SERVER_NAME

    @classmethod
    def from_settings(cls, settings: Any) -> TlsFiles | None:
        """None when the settings name no certificate (plaintext); all three or none."""
        files = (settings.tls_cert, settings.tls_key, settings.tls_ca)
        if not any(files):
            return None
        if not all(files):
            raise ValueError("tls_cert, tls_key and tls_ca go together: give all three "
                             f"(got tls_cert={files[0]!r}, tls_key={files[1]!r}, "
                             f"tls_ca={files[2]!r})")
        for name, path in zip(("tls_cert", "tls_key", "tls_ca"), files, strict=True):
            if not Path(path).is_file():
                raise ValueError(f"{name}={path!r} is not a readable file")
        return cls(*files, server_name=settings.tls_server_name or FLEET_SERVER_NAME)

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return (Path(self.cert_file).read_bytes(), Path(self.key_file).read_bytes(),
                Path(self.ca_file).read_bytes())

    def server_credentials(self, require_client_cert: bool = True) -> grpc.ServerCredentials:
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                           require_client_auth=require_client_cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Verifies the peer against the fleet's CA and presents this process's cert."""
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                            certificate_chain=cert)

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)]


def open_channel(address: str, tls: TlsFiles | None,
                 options: list[tuple[str, Any]] | tuple[tuple[str, Any], ...] = ()
                 ) -> grpc.Channel:
    """A channel to a fleet peer: mutual TLS when ``tls`` is set, else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.channel_credentials(),
                               options=list(options) + tls.channel_options())
