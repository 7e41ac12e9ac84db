"""``python -m services.common.health_probe --port P``: a gRPC health check over the
service's own TLS, for Kubernetes exec probes (the kubelet's gRPC probe speaks plaintext).

Exit 0 when the service answers SERVING, 1 otherwise. TLS files come from the same
``DFLEET_TLS_*`` variables as the service's.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import FLEET_SERVER_NAME, TlsFiles, open_channel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.health_probe",
                                     description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the service's gRPC port")
    parser.add_argument("--host", default="127.0.0.1", help="where the service listens")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait")
    args = parser.parse_args(argv)
    env = SimpleNamespace(**{name: os.environ.get(f"DFLEET_{name.upper()}", "") for name in
                             ("tls_cert", "tls_key", "tls_ca", "tls_server_name")})
    env.tls_server_name = env.tls_server_name or FLEET_SERVER_NAME
    with open_channel(f"{args.host}:{args.port}", TlsFiles.from_settings(env)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=args.timeout)
        except grpc.RpcError as err:
            print(f"health check failed: {err.code().name}", file=sys.stderr)
            return 1
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
