"""Check meshd's gRPC health service (grpc.health.v1.Health/Check) over TLS; exit 0 if SERVING.

    python grpc_health_probe.py --address localhost:18001 --ca /var/lib/meshd/ca.pem

meshd serves gRPC health on its admin port (``--admin``), next to the admin API, and off
loopback that port speaks TLS only (``--xds-tls on`` covers xDS and the admin API).
Kubernetes' built-in ``grpc`` probe and Docker's health checks speak plaintext, so this runs
inside the meshd container instead, with what its image already holds (grpcio and the
health-checking stubs), trusting the bundle meshd writes to ``<data-dir>/ca.pem`` at start.
Dial a name in meshd's serving certificate: ``localhost`` is there by default.

Exit status: 0 SERVING; 1 anything else (not serving, unreachable, TLS refused, timeout),
with one line on stderr saying which.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="localhost:18001", help="meshd's admin HOST:PORT")
    p.add_argument("--ca", default="/var/lib/meshd/ca.pem", help="PEM bundle to trust")
    p.add_argument("--plaintext", action="store_true", help="no TLS (a loopback meshd)")
    p.add_argument("--service", default="", help="service name to ask about ('': the server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds for the whole check")
    args = p.parse_args(argv)

    # Imported here: --help works without grpcio.
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.plaintext:
        channel = grpc.insecure_channel(args.address)
    else:
        try:
            with open(args.ca, "rb") as f:
                roots = f.read()
        except OSError as exc:
            print(f"grpc health probe: --ca {args.ca}: {exc.strerror}", file=sys.stderr)
            return 1
        channel = grpc.secure_channel(args.address, grpc.ssl_channel_credentials(roots))
    try:
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        code = exc.code()
        print(
            f"grpc health probe: {args.address}: {code.name if code else '?'} {exc.details()}",
            file=sys.stderr,
        )
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"grpc health probe: {args.address}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
