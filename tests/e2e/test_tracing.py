"""Listener tracing: validation, references, and a span reaching a Zipkin receiver of ours
through a real Envoy configured by meshd (request ids propagated end to end)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from integration.harness import free_port, http_get
from integration.zipkin_receiver import SPANS_PATH, ZipkinReceiver
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.wait import eventually
from tests.support.xds_client import running_meshd
from xds_server.cli.bootstrap import bootstrap
from xds_server.errors import ValidationError
from xds_server.ingest.registry import Entry, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model.fields import Obj
from xds_server.model.listener import Tracing, parse_listener
from xds_server.model.names import ServiceRef


def listener(value: dict[str, Any]) -> Any:
    return parse_listener("public", Obj(value))


def test_tracing_block_is_parsed_with_defaults() -> None:
    lst = listener({"port": 1, "tracing": {"provider": "zipkin", "service": "obs/zipkin"}})
    assert lst.tracing == Tracing("zipkin", ServiceRef("obs", "zipkin"), 1)
    lst = listener({"port": 1, "tracing": {"provider": "opentelemetry", "service": "otel"}})
    assert lst.tracing == Tracing("opentelemetry", ServiceRef("default", "otel"), 1)


ZIPKIN_Z = {"provider": "zipkin", "service": "z"}


@pytest.mark.parametrize(
    ("tracing", "field", "fragment"),
    [
        ({"provider": "jaeger", "service": "z"}, "tracing.provider", "zipkin, opentelemetry"),
        ({"service": "z"}, "tracing.provider", "required"),
        ({"provider": "zipkin"}, "tracing.service", "required"),
        ({"provider": "zipkin", "service": "a/b/c"}, "tracing.service", "namespace/name"),
        ({**ZIPKIN_Z, "sampling_percent": 101}, "tracing.sampling_percent", ""),
        ({**ZIPKIN_Z, "sampling_percent": "5"}, "tracing.sampling_percent", "integer"),
        ({**ZIPKIN_Z, "samplng_percent": 5}, "tracing.samplng_percent", "sampling_percent"),
        ("zipkin", "tracing", "object"),
    ],
)
def test_bad_tracing_blocks_name_the_field(tracing: object, field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        listener({"port": 1, "tracing": tracing})
    assert err.value.field == field
    assert fragment in str(err.value)


def test_tracing_on_a_tcp_listener_is_an_error() -> None:
    with pytest.raises(ValidationError) as err:
        listener(
            {
                "port": 1,
                "protocol": "tcp",
                "service": "db",
                "tracing": {"provider": "zipkin", "service": "z"},
            }
        )
    assert err.value.field == "tracing"


def _state(entries: dict[str, dict[str, Any]]) -> RegistryState:
    state = RegistryState("/mesh/")
    found = tuple(
        Entry("/mesh/" + key, json.dumps(value).encode(), i + 1)
        for i, (key, value) in enumerate(entries.items())
    )
    state.apply(Reset(len(found), found))
    return state


@pytest.mark.parametrize(
    ("collector", "provider", "reason"),
    [
        (None, "zipkin", "unknown service obs/trace"),
        ({"protocol": "tcp", "port": 1}, "zipkin", "speaks tcp; zipkin needs http or http2"),
        ({"port": 1}, "opentelemetry", "speaks http; opentelemetry needs grpc or http2"),
    ],
)
def test_collector_references_are_checked(
    collector: dict[str, Any] | None, provider: str, reason: str
) -> None:
    entries: dict[str, dict[str, Any]] = {
        "listeners/public": {
            "port": 10000,
            "tracing": {"provider": provider, "service": "obs/trace"},
        }
    }
    if collector is not None:
        entries["services/obs/trace"] = collector
    state = _state(entries)
    problem = state.problems["/mesh/listeners/public"]
    assert problem.field == "tracing.service"
    assert reason in problem.message
    assert "public" not in state.listeners


async def test_a_span_reaches_the_zipkin_receiver_with_the_request_id(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> None:
    web = backend_factory("web")
    web_port = int(web.url.rstrip("/").rsplit(":", 1)[1])
    listener_port = free_port()
    with ZipkinReceiver() as zipkin:
        entries = {
            "services/obs/zipkin": {"port": zipkin.port},
            "endpoints/obs/zipkin/a": {"address": "127.0.0.1"},
            "services/default/web": {"port": web_port},
            "endpoints/default/web/a": {"address": "127.0.0.1"},
            "listeners/public": {
                "port": listener_port,
                "address": "127.0.0.1",
                "tracing": {"provider": "zipkin", "service": "obs/zipkin", "sampling_percent": 100},
            },
        }
        async with running_meshd(entries) as (_, app):
            bs = bootstrap("gw-1", "gateway", xds_port=app.xds_port, admin_port=0)
            envoy = await asyncio.to_thread(envoy_factory, bs, name="gateway")
            url = f"http://127.0.0.1:{listener_port}/__echo"
            host = {"host": "web.default"}

            def traced_requests() -> list[tuple[dict[str, str], dict[str, str]]]:
                out = []
                # Envoy's Zipkin tracer flushes every 5 spans (or every 5 s): send enough.
                for _ in range(6):
                    status, body, headers = http_get(url, host)
                    assert status == 200, body
                    out.append((json.loads(body)["headers"], headers))
                return out

            # The listener (and its route) may not be there on the first try.
            seen = await eventually(
                traced_requests,
                "six traced requests answered 200",
                10,
                interval=0.1,
                ignoring=(AssertionError, OSError, ValueError),
                blocking=True,
            )
            upstream, response = seen[-1]
            # Request id: generated, passed upstream, and returned to the caller.
            assert upstream["x-request-id"] == response["x-request-id"]
            # B3 context propagated upstream (128-bit trace ids).
            trace_id = upstream["x-b3-traceid"]
            assert len(trace_id) == 32 and upstream["x-b3-sampled"] == "1"

            await eventually(
                zipkin.spans,
                f"a span for {trace_id}",
                10,
                until=lambda spans: any(s.get("traceId") == trace_id for s in spans),
                interval=0.1,
                context=lambda: (
                    "Envoy's tracing stats: "
                    f"{envoy.stats('tracing|cluster.zipkin.obs.upstream_rq_')}"
                ),
            )
        span = next(s for s in zipkin.spans() if s.get("traceId") == trace_id)
        assert span["localEndpoint"]["serviceName"] == "gateway"  # the node's cluster
        assert span["tags"]["guid:x-request-id"] == upstream["x-request-id"]
        assert span["tags"]["http.status_code"] == "200"
        # The receiver speaks Zipkin's v2 API: what it keeps can be read back.
        status, body, _ = http_get(f"http://127.0.0.1:{zipkin.port}{SPANS_PATH}")
        assert status == 200 and any(s["traceId"] == trace_id for s in json.loads(body))
