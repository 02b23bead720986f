"""A tiny gRPC backend that answers ``/apg.test.Who/Who`` with its name (raw bytes, no proto).

Used to test proxyless gRPC clients (``xds:///``) and gRPC through Envoy.
"""

from __future__ import annotations

import argparse
import time
from concurrent import futures

import grpc

WHO_METHOD = "/apg.test.Who/Who"


def serve(name: str, port: int = 0, host: str = "127.0.0.1") -> tuple[grpc.Server, int]:
    """Start a server answering WHO_METHOD with ``name``; return it and its port."""

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "apg.test.Who",
        {
            "Who": grpc.unary_unary_rpc_method_handler(
                who, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    _, port = serve(args.name, args.port)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
