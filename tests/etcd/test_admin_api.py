"""Admin API registry calls against real etcd: CRUD, revisions, validation, apply, split."""

from __future__ import annotations

import asyncio
import json

import grpc

from tests.support.fixtures_admin import AdminMesh, entry, rpc_error, seed
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.entries import spec_json
from xds_server.ingest.registry import Entry
from xds_server.model.entries import parse_entry

SVC = {"port": 8080, "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}}}
ROUTE = {
    "listener": "public",
    "match": {"prefix": "/"},
    "destinations": [{"service": "web", "subset": "v1", "weight": 100}],
}


async def test_create_get_update_delete_with_revisions(admin_mesh: AdminMesh) -> None:
    stub = admin_mesh.stub
    created = await stub.CreateEntry(
        pb.CreateEntryRequest(entry=entry(pb.KIND_SERVICE, "web", SVC, ns="shop"))
    )
    assert created.entry.revision > 0
    assert created.entry.key == f"{admin_mesh.prefix}services/shop/web"
    # What etcd holds is exactly the registry JSON (ints stay ints).
    stored = await admin_mesh.registry.get(created.entry.key)
    assert stored is not None and json.loads(stored.value) == SVC

    got = await stub.GetEntry(pb.GetEntryRequest(ref=created.entry.ref))
    assert got.entry.revision == created.entry.revision
    assert spec_json(got.entry.spec) == SVC

    code, msg = await rpc_error(
        stub.CreateEntry(pb.CreateEntryRequest(entry=entry(pb.KIND_SERVICE, "web", SVC, ns="shop")))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and "services/shop/web" in msg

    new = {**SVC, "port": 9090}
    updated = await stub.UpdateEntry(
        pb.UpdateEntryRequest(
            entry=entry(pb.KIND_SERVICE, "web", new, ns="shop", revision=got.entry.revision)
        )
    )
    assert updated.entry.revision > got.entry.revision
    # The revision read before the update is stale now: ABORTED, nothing written.
    code, msg = await rpc_error(
        stub.UpdateEntry(
            pb.UpdateEntryRequest(
                entry=entry(pb.KIND_SERVICE, "web", SVC, ns="shop", revision=got.entry.revision)
            )
        )
    )
    assert code == grpc.StatusCode.ABORTED and "re-read" in msg
    stored = await admin_mesh.registry.get(created.entry.key)
    assert stored is not None and json.loads(stored.value)["port"] == 9090

    code, _ = await rpc_error(
        stub.DeleteEntry(pb.DeleteEntryRequest(ref=created.entry.ref, revision=got.entry.revision))
    )
    assert code == grpc.StatusCode.ABORTED
    await stub.DeleteEntry(
        pb.DeleteEntryRequest(ref=created.entry.ref, revision=updated.entry.revision)
    )
    code, _ = await rpc_error(stub.GetEntry(pb.GetEntryRequest(ref=created.entry.ref)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await rpc_error(
        stub.UpdateEntry(pb.UpdateEntryRequest(entry=entry(pb.KIND_SERVICE, "web", SVC, ns="shop")))
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_list_by_kind_and_namespace(admin_mesh: AdminMesh) -> None:
    await seed(
        admin_mesh.stub,
        [
            entry(pb.KIND_SERVICE, "web", SVC, ns="shop"),
            entry(pb.KIND_SERVICE, "api", {"port": 80}, ns="shop"),
            entry(pb.KIND_SERVICE, "auth", {"port": 80}, ns="id"),
            entry(pb.KIND_ENDPOINT, "e1", {"address": "127.0.0.1"}, ns="shop", service="web"),
            entry(pb.KIND_LISTENER, "public", {"port": 10000}),
        ],
    )
    everything = await admin_mesh.stub.ListEntries(pb.ListEntriesRequest(kind=pb.KIND_SERVICE))
    assert [e.key.rsplit("/", 2)[-2:] for e in everything.entries] == [
        ["id", "auth"],
        ["shop", "api"],
        ["shop", "web"],
    ]
    assert everything.revision >= max(e.revision for e in everything.entries)
    shop = await admin_mesh.stub.ListEntries(
        pb.ListEntriesRequest(kind=pb.KIND_SERVICE, namespace="shop")
    )
    assert sorted(e.ref.name for e in shop.entries) == ["api", "web"]
    eps = await admin_mesh.stub.ListEntries(
        pb.ListEntriesRequest(kind=pb.KIND_ENDPOINT, namespace="shop", service="web")
    )
    assert [(e.ref.service, e.ref.name) for e in eps.entries] == [("web", "e1")]
    listeners = await admin_mesh.stub.ListEntries(pb.ListEntriesRequest(kind=pb.KIND_LISTENER))
    assert [e.ref.name for e in listeners.entries] == ["public"]
    assert listeners.entries[0].ref.namespace == ""


async def test_validation_errors_match_etcd_edits(admin_mesh: AdminMesh) -> None:
    """INVALID_ARGUMENT names the entry and the field with the registry's own message."""
    bad = {"port": 70000, "protocol": "http"}
    code, msg = await rpc_error(
        admin_mesh.stub.CreateEntry(
            pb.CreateEntryRequest(entry=entry(pb.KIND_SERVICE, "web", bad, ns="shop"))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    _, problem = parse_entry(
        f"{admin_mesh.prefix}services/shop/web", json.dumps(bad).encode(), admin_mesh.prefix
    )
    assert msg == f"services/shop/web: spec.{problem.field}: {problem.reason}"  # type: ignore[union-attr]

    code, msg = await rpc_error(
        admin_mesh.stub.CreateEntry(
            pb.CreateEntryRequest(entry=entry(pb.KIND_SERVICE, "web", {"prot": 80}, ns="shop"))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.prot: unknown field (did you mean 'port'?)" in msg

    # Reference rules too: a route to a service that does not exist.
    code, msg = await rpc_error(
        admin_mesh.stub.CreateEntry(
            pb.CreateEntryRequest(entry=entry(pb.KIND_ROUTE, "r", ROUTE, ns="shop"))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert msg == "routes/shop/r: spec.destinations[0].service: unknown service shop/web"

    for ref, field in [
        (pb.EntryRef(kind=pb.KIND_SERVICE, namespace="shop"), "ref.name"),
        (pb.EntryRef(kind=pb.KIND_UNSPECIFIED, name="x"), "ref.kind"),
        (pb.EntryRef(kind=9, name="x"), "ref.kind"),  # type: ignore[arg-type]
        (pb.EntryRef(kind=pb.KIND_SERVICE, name="Bad_Name"), "ref"),
        (pb.EntryRef(kind=pb.KIND_ENDPOINT, name="e1"), "ref.service"),
        (pb.EntryRef(kind=pb.KIND_LISTENER, name="l", namespace="x"), "ref.namespace"),
    ]:
        code, msg = await rpc_error(admin_mesh.stub.GetEntry(pb.GetEntryRequest(ref=ref)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (ref, msg)
        assert f"{field}:" in msg, (ref, msg)
    assert admin_mesh.app.controller.state.problems == {}


async def test_apply_is_all_or_nothing(admin_mesh: AdminMesh) -> None:
    stub = admin_mesh.stub
    # A route and the service it names, in one batch: valid together.
    out = await seed(
        stub,
        [
            entry(pb.KIND_ROUTE, "r", ROUTE, ns="shop"),
            entry(pb.KIND_SERVICE, "web", SVC, ns="shop"),
        ],
    )
    assert [e.outcome for e in out.entries] == [pb.APPLY_OUTCOME_CREATED] * 2
    again = await seed(stub, [entry(pb.KIND_SERVICE, "web", SVC, ns="shop")])
    assert again.entries[0].outcome == pb.APPLY_OUTCOME_UNCHANGED

    before = await admin_mesh.registry.list_prefix(admin_mesh.prefix)
    code, msg = await rpc_error(
        seed(
            stub,
            [
                entry(pb.KIND_SERVICE, "api", {"port": 80}, ns="shop"),
                entry(pb.KIND_SERVICE, "web", {**SVC, "port": 81}, ns="shop"),
                entry(pb.KIND_SERVICE, "bad", {"port": "eighty"}, ns="shop"),
            ],
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert msg.startswith("entries[2] services/shop/bad: spec.port:")
    after = await admin_mesh.registry.list_prefix(admin_mesh.prefix)

    def registry(entries: tuple[Entry, ...]) -> list[Entry]:
        return [e for e in entries if "/status/" not in e.key]  # meshd's own output aside

    assert registry(after.entries) == registry(before.entries)  # nothing half-written

    # A stale revision anywhere in the batch aborts all of it.
    web_rev = out.entries[1].entry.revision
    await admin_mesh.put_json("services/shop/web", {**SVC, "port": 82})
    code, _ = await rpc_error(
        seed(
            stub,
            [
                entry(pb.KIND_SERVICE, "api", {"port": 80}, ns="shop"),
                entry(pb.KIND_SERVICE, "web", SVC, ns="shop", revision=web_rev),
            ],
        )
    )
    assert code == grpc.StatusCode.ABORTED
    assert await admin_mesh.registry.get(f"{admin_mesh.prefix}services/shop/api") is None


async def test_split_replaces_destinations_in_one_write(admin_mesh: AdminMesh) -> None:
    stub = admin_mesh.stub
    route = {**ROUTE, "timeout_ms": 1500}
    await seed(
        stub,
        [
            entry(pb.KIND_SERVICE, "web", SVC, ns="shop"),
            entry(pb.KIND_ROUTE, "r", route, ns="shop"),
        ],
    )
    await admin_mesh.wait_for(
        lambda: f"{admin_mesh.prefix}routes/shop/r" in admin_mesh.app.controller.state.routes,
        "the route in force",
    )
    out = await stub.SetSplit(
        pb.SetSplitRequest(
            namespace="shop",
            route="r",
            destinations=[
                pb.Destination(service="web", subset="v1", weight=90),
                pb.Destination(service="shop/web", subset="v2", weight=10),
            ],
        )
    )
    spec = spec_json(out.entry.spec)
    assert spec["timeout_ms"] == 1500  # the rest of the route is untouched
    assert spec["destinations"] == [
        {"service": "web", "subset": "v1", "weight": 90},
        {"service": "shop/web", "subset": "v2", "weight": 10},
    ]
    code, msg = await rpc_error(
        stub.SetSplit(
            pb.SetSplitRequest(
                namespace="shop",
                route="r",
                destinations=[pb.Destination(service="web", subset="v9", weight=5)],
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "destinations[0]" in msg
    code, _ = await rpc_error(
        stub.SetSplit(pb.SetSplitRequest(namespace="shop", route="nope", destinations=[]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await rpc_error(
        stub.SetSplit(
            pb.SetSplitRequest(
                namespace="shop",
                route="nope",
                destinations=[pb.Destination(service="web", weight=1)],
            )
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_two_writers_racing_on_one_route_exactly_one_wins(admin_mesh: AdminMesh) -> None:
    stub = admin_mesh.stub
    await seed(
        stub,
        [
            entry(pb.KIND_SERVICE, "web", SVC, ns="shop"),
            entry(pb.KIND_ROUTE, "r", ROUTE, ns="shop"),
        ],
    )
    await admin_mesh.wait_for(
        lambda: f"{admin_mesh.prefix}services/shop/web" in admin_mesh.app.controller.state._force,
        "the service in force",
    )
    for round_ in range(5):
        got = await stub.GetEntry(
            pb.GetEntryRequest(ref=pb.EntryRef(kind=pb.KIND_ROUTE, namespace="shop", name="r"))
        )
        rev = got.entry.revision

        def split(w1: int, rev: int = rev) -> pb.SetSplitRequest:
            return pb.SetSplitRequest(
                namespace="shop",
                route="r",
                revision=rev,
                destinations=[
                    pb.Destination(service="web", subset="v1", weight=w1),
                    pb.Destination(service="web", subset="v2", weight=100 - w1),
                ],
            )

        results = await asyncio.gather(
            stub.SetSplit(split(10 + round_)),
            stub.SetSplit(split(70 + round_)),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, pb.SetSplitResponse)]
        losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(wins) == 1 and len(losses) == 1, results
        assert losses[0].code() == grpc.StatusCode.ABORTED
        stored = await admin_mesh.registry.get(f"{admin_mesh.prefix}routes/shop/r")
        assert stored is not None
        # Nothing lost: etcd holds exactly the winner's write.
        assert json.loads(stored.value) == spec_json(wins[0].entry.spec)
        assert stored.mod_revision == wins[0].entry.revision


async def test_update_keeps_an_endpoints_lease(admin_mesh: AdminMesh) -> None:
    stub = admin_mesh.stub
    await seed(stub, [entry(pb.KIND_SERVICE, "web", SVC, ns="shop")])
    await admin_mesh.wait_for(
        lambda: bool(admin_mesh.app.controller.state.services), "the service in force"
    )
    reg = await stub.RegisterEndpoint(
        pb.RegisterEndpointRequest(
            namespace="shop",
            service="web",
            id="i1",
            spec=entry(0, "x", {"address": "127.0.0.1"}).spec,
            ttl_seconds=30,
        )
    )
    assert reg.lease > 0 and reg.entry.lease == reg.lease
    upd = await stub.UpdateEntry(
        pb.UpdateEntryRequest(
            entry=entry(pb.KIND_ENDPOINT, "i1", {"address": "127.0.0.2"}, ns="shop", service="web")
        )
    )
    assert upd.entry.lease == reg.lease
    stored = await admin_mesh.registry.get(f"{admin_mesh.prefix}endpoints/shop/web/i1")
    assert stored is not None and stored.lease == reg.lease
    assert (await stub.KeepAlive(pb.KeepAliveRequest(lease=reg.lease))).ttl_seconds > 0
    code, _ = await rpc_error(stub.KeepAlive(pb.KeepAliveRequest(lease=0x7EADBEEF)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, msg = await rpc_error(
        stub.RegisterEndpoint(
            pb.RegisterEndpointRequest(namespace="shop", service="web", id="i2", ttl_seconds=0)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ttl_seconds" in msg


async def test_errors_list_what_meshd_rejects(admin_mesh: AdminMesh) -> None:
    await admin_mesh.put_json("services/shop/web", {"port": "x"})
    await admin_mesh.wait_for(
        lambda: bool(admin_mesh.app.controller.state.problems), "the rejected entry"
    )
    out = await admin_mesh.stub.ListErrors(pb.ListErrorsRequest())
    assert [(e.key, e.field) for e in out.errors] == [
        (f"{admin_mesh.prefix}services/shop/web", "port")
    ]
    assert "must be an integer" in out.errors[0].reason
    got = await admin_mesh.stub.GetEntry(
        pb.GetEntryRequest(ref=pb.EntryRef(kind=pb.KIND_SERVICE, namespace="shop", name="web"))
    )
    assert spec_json(got.entry.spec) == {"port": "x"}
    await admin_mesh.registry.put(f"{admin_mesh.prefix}services/shop/web", b"{not json")
    got = await admin_mesh.stub.GetEntry(
        pb.GetEntryRequest(ref=pb.EntryRef(kind=pb.KIND_SERVICE, namespace="shop", name="web"))
    )
    assert got.entry.raw == "{not json" and not got.entry.spec.fields
