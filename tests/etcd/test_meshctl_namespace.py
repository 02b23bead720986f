"""Namespace entries (``namespaces/<ns>``: mtls, default_policy, export_to) through the admin
API (KIND_NAMESPACE) and the real ``meshctl`` process, against a real meshd and etcd:
create, get, list, update, delete; bad values refused naming the field as the registry fold
does; a token limited to some namespaces neither reads nor writes another's entry, nor sees
it listed; narrowing ``export_to`` under routes in force is refused unless forced, without
naming routes of namespaces the writer cannot read."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc

from tests.support.fixtures_admin import AdminMesh, bearer, entry, rpc_error, seed
from tests.support.meshctl import meshctl
from xds_server.admin.api import admin_pb2 as pb

MANIFEST = """\
kind: Namespace
name: shop
spec: {mtls: strict, default_policy: deny, export_to: [web, "shop-*"]}
---
kind: Namespace
name: billing
spec: {export_to: []}
"""

ALL, SHOP, VIEW_SHOP = bearer("edit-all"), bearer("edit-shop"), bearer("view-shop")


def _ns_ref(name: str) -> pb.EntryRef:
    return pb.EntryRef(kind=pb.KIND_NAMESPACE, name=name)


async def test_namespace_entries_through_meshctl(admin_mesh: AdminMesh, tmp_path: Path) -> None:
    admin = ("--admin", admin_mesh.address)
    state = admin_mesh.app.controller.state
    path = tmp_path / "ns.yaml"
    path.write_text(MANIFEST)
    code, out, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 0, err
    assert out.splitlines() == ["namespace/shop created", "namespace/billing created"]
    await admin_mesh.wait_for(
        lambda: "shop" in state.namespaces and "billing" in state.namespaces, "both in force"
    )
    assert state.namespaces["shop"].mtls == "strict"
    assert state.namespaces["shop"].export_to == ("web", "shop-*")
    assert state.namespaces["billing"].export_to == ()

    code, out, err = await meshctl("get", "namespaces", *admin)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "MTLS", "DEFAULT_POLICY", "EXPORT_TO", "REVISION"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:]}
    assert rows == {"billing": ["off", "allow", "none"], "shop": ["strict", "deny", "web,shop-*"]}

    code, out, err = await meshctl("get", "namespace", "shop", "-o", "json", *admin)
    assert code == 0, err
    (doc,) = json.loads(out)["items"]
    assert doc["kind"] == "Namespace" and doc["name"] == "shop" and "namespace" not in doc
    assert doc["spec"] == {
        "mtls": "strict",
        "default_policy": "deny",
        "export_to": ["web", "shop-*"],
    }
    first = doc["revision"]
    assert first > 0

    # What get prints applies again: unchanged; edited: configured, at a new revision.
    code, out, err = await meshctl("apply", "-f", "-", *admin, stdin=json.dumps([doc]))
    assert code == 0, err
    assert out.splitlines() == ["namespace/shop unchanged"]
    doc["spec"]["mtls"] = "permissive"
    code, out, err = await meshctl("apply", "-f", "-", *admin, stdin=json.dumps([doc]))
    assert code == 0, err
    assert out.splitlines() == ["namespace/shop configured"]
    got = await admin_mesh.stub.GetEntry(pb.GetEntryRequest(ref=_ns_ref("shop")))
    assert got.entry.revision > first
    assert got.entry.key == f"{admin_mesh.prefix}namespaces/shop"
    await admin_mesh.wait_for(lambda: state.namespaces["shop"].mtls == "permissive", "updated")
    # A stale revision is ABORTED, as for every kind.
    code, _, err = await meshctl("apply", "-f", "-", *admin, stdin=json.dumps([doc]))
    assert code == 1 and "ABORTED" in err, err

    # -n names the namespace of other kinds; for this one it must agree with NAME.
    code, _, err = await meshctl("get", "namespace", "shop", "-n", "billing", *admin)
    assert code == 1 and "drop -n billing" in err, err
    code, out, err = await meshctl("get", "namespaces", "-n", "billing", "-o", "json", *admin)
    assert code == 0, err
    assert [d["name"] for d in json.loads(out)["items"]] == ["billing"]

    code, out, err = await meshctl("delete", "namespace", "shop", *admin)
    assert code == 0, err
    assert out.splitlines() == ["namespace/shop deleted"]
    await admin_mesh.wait_for(lambda: "shop" not in state.namespaces, "shop's entry gone")
    code, _, err = await meshctl("get", "namespace", "shop", *admin)
    assert code == 1 and "NOT_FOUND" in err and "namespaces/shop" in err, err


async def test_bad_values_are_refused_naming_the_field_as_the_registry_does(
    admin_mesh: AdminMesh, tmp_path: Path
) -> None:
    admin = ("--admin", admin_mesh.address)
    bad = {"mtls": "sometimes", "default_policy": "maybe", "export_to": ["Shop!"]}
    for field, value in bad.items():
        # Written with etcd: the registry fold rejects it with a field and a reason ...
        await admin_mesh.put_json(f"namespaces/etcd-{field.replace('_', '-')}", {field: value})
    errors: dict[str, pb.RegistryError] = {}

    async def fold_errors() -> bool:
        resp = await admin_mesh.stub.ListErrors(pb.ListErrorsRequest())
        errors.update({e.key.rpartition("/")[2]: e for e in resp.errors})
        return len(errors) == 3

    for _ in range(250):
        if await fold_errors():
            break
        await asyncio.sleep(0.02)
    assert len(errors) == 3, errors
    for field, value in bad.items():
        folded = errors[f"etcd-{field.replace('_', '-')}"]
        # ... and the API refuses the same value with the same field (under spec.) and reason.
        req = pb.CreateEntryRequest(entry=entry(pb.KIND_NAMESPACE, "api", {field: value}))
        code, msg = await rpc_error(admin_mesh.stub.CreateEntry(req))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
        assert f"namespaces/api: spec.{folded.field}: {folded.reason}" in msg, (msg, folded)
    # Unknown fields too; and meshctl says which document and field.
    path = tmp_path / "bad.yaml"
    path.write_text("kind: Namespace\nname: shop\nspec: {mtls: strict, exports: [web]}\n")
    code, _, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 1 and "namespaces/shop: spec.exports" in err, err
    path.write_text("kind: Namespace\nname: shop\nspec: {mtls: on-demand}\n")
    code, _, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 1 and "INVALID_ARGUMENT" in err and "spec.mtls" in err, err
    # A Namespace document's namespace, if given, is its own name.
    path.write_text("kind: Namespace\nnamespace: default\nname: shop\nspec: {}\n")
    code, _, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 1 and "document 1 (Namespace default/shop): namespace:" in err, err
    resp = await admin_mesh.stub.ListEntries(pb.ListEntriesRequest(kind=pb.KIND_NAMESPACE))
    assert {e.ref.name for e in resp.entries} == {f"etcd-{f.replace('_', '-')}" for f in bad}


async def test_a_limited_token_reads_and_writes_its_own_namespace_entry_only(
    admin_mesh_tokens: AdminMesh,
) -> None:
    stub = admin_mesh_tokens.stub
    names = ("shop", "shop-eu", "billing")
    await seed(stub, [entry(pb.KIND_NAMESPACE, n, {"mtls": "strict"}) for n in names], ALL)

    # edit-shop (shop, shop-*) writes its own namespaces' entries ...
    mine = entry(pb.KIND_NAMESPACE, "shop", {"default_policy": "deny"})
    await stub.UpdateEntry(pb.UpdateEntryRequest(entry=mine), metadata=SHOP)
    await seed(stub, [entry(pb.KIND_NAMESPACE, "shop-eu", {"mtls": "off"})], SHOP)
    # ... never another's: by name, by a ref claiming its own namespace, in a batch.
    theirs = entry(pb.KIND_NAMESPACE, "billing", {"mtls": "off"})
    for call in (
        stub.UpdateEntry(pb.UpdateEntryRequest(entry=theirs), metadata=SHOP),
        stub.DeleteEntry(pb.DeleteEntryRequest(ref=_ns_ref("billing")), metadata=SHOP),
        seed(stub, [mine, theirs], SHOP),
    ):
        code, msg = await rpc_error(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "'billing'" in msg, msg
    disguised = entry(pb.KIND_NAMESPACE, "billing", {"mtls": "off"}, ns="shop")
    code, msg = await rpc_error(
        stub.UpdateEntry(pb.UpdateEntryRequest(entry=disguised), metadata=SHOP)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ref.namespace" in msg, msg
    # Nor reads it, alone or in a list.
    code, msg = await rpc_error(
        stub.GetEntry(pb.GetEntryRequest(ref=_ns_ref("billing")), metadata=SHOP)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED, msg
    listed = await stub.ListEntries(pb.ListEntriesRequest(kind=pb.KIND_NAMESPACE), metadata=SHOP)
    assert [e.ref.name for e in listed.entries] == ["shop", "shop-eu"]
    code, msg = await rpc_error(
        stub.ListEntries(
            pb.ListEntriesRequest(kind=pb.KIND_NAMESPACE, namespace="billing"), metadata=SHOP
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED, msg
    # (one namespace's list is that entry, not every name it prefixes)
    one = await stub.ListEntries(
        pb.ListEntriesRequest(kind=pb.KIND_NAMESPACE, namespace="shop"), metadata=SHOP
    )
    assert [e.ref.name for e in one.entries] == ["shop"]

    # A viewer of shop reads shop's entry and writes none.
    got = await stub.GetEntry(pb.GetEntryRequest(ref=_ns_ref("shop")), metadata=VIEW_SHOP)
    assert got.entry.spec["default_policy"] == "deny"
    code, msg = await rpc_error(
        stub.UpdateEntry(pb.UpdateEntryRequest(entry=mine), metadata=VIEW_SHOP)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "viewer" in msg, msg

    # The same through meshctl with the token.
    admin = ("--admin", admin_mesh_tokens.address, "--token", "edit-shop")
    code, out, err = await meshctl("get", "namespaces", "-o", "json", *admin)
    assert code == 0, err
    assert [d["name"] for d in json.loads(out)["items"]] == ["shop", "shop-eu"]
    code, _, err = await meshctl("get", "namespace", "billing", *admin)
    assert code == 2 and "PERMISSION_DENIED" in err, err
    code, _, err = await meshctl("delete", "namespace", "billing", *admin)
    assert code == 2 and "PERMISSION_DENIED" in err, err
    code, out, err = await meshctl("delete", "namespace", "shop-eu", *admin)
    assert code == 0, err
    view = ("--admin", admin_mesh_tokens.address, "--token", "view-shop")
    code, out, err = await meshctl("get", "namespaces", "-o", "json", *view)
    assert code == 0, err
    assert [d["name"] for d in json.loads(out)["items"]] == ["shop"]


SHOP_MESH = [
    entry(pb.KIND_LISTENER, "public", {"port": 10000}),
    entry(pb.KIND_SERVICE, "web", {"port": 8080}, ns="shop"),
    entry(pb.KIND_SERVICE, "pay", {"port": 8080}, ns="billing"),
]
# billing's route to shop's service: in force while shop exports to billing.
BUY = {"listener": "public", "match": {"prefix": "/buy"}, "destinations": [{"service": "shop/web"}]}


async def test_narrowing_export_to_is_refused_unless_forced(
    admin_mesh_tokens: AdminMesh, tmp_path: Path
) -> None:
    mesh = admin_mesh_tokens
    stub, state = mesh.stub, mesh.app.controller.state
    await seed(stub, SHOP_MESH, ALL)
    await mesh.wait_for(lambda: len(state.services) == 2 and "public" in state.listeners, "mesh")
    await seed(stub, [entry(pb.KIND_ROUTE, "buy", BUY, ns="billing")], ALL)
    route_key = f"{mesh.prefix}routes/billing/buy"
    await mesh.wait_for(lambda: route_key in state.routes, "billing/buy in force")

    narrowed = entry(pb.KIND_NAMESPACE, "shop", {"export_to": ["web"]})
    # A token for every namespace is told which route would leave force ...
    code, msg = await rpc_error(
        stub.CreateEntry(pb.CreateEntryRequest(entry=narrowed), metadata=ALL)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION, msg
    assert "routes/billing/buy (destinations[0].service: namespace shop does not export" in msg
    assert "(meshctl --force; those routes then leave force)" in msg, msg
    # ... shop's own editor that one would, not which: billing is not its to read.
    code, msg = await rpc_error(seed(stub, [narrowed], SHOP))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, msg
    assert "1 entry in force depends on it" in msg and "namespaces you cannot read" in msg, msg
    assert "billing" not in msg and "buy" not in msg, msg
    # Widening, or a namespace no route sends to, is no such change.
    await seed(stub, [entry(pb.KIND_NAMESPACE, "shop", {"export_to": ["billing"]})], SHOP)
    await seed(stub, [entry(pb.KIND_NAMESPACE, "shop-eu", {"export_to": []})], SHOP)
    assert route_key in state.routes

    # A route written in the same batch as the exports is judged against them.
    both = [narrowed, entry(pb.KIND_ROUTE, "buy2", BUY, ns="billing")]
    code, msg = await rpc_error(
        stub.ApplyEntries(pb.ApplyEntriesRequest(entries=both, force=True), metadata=ALL)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
    assert (
        "routes/billing/buy2: spec.destinations[0].service: namespace shop does not export" in msg
    )

    # Forced (meshctl --force), the write is shop's own decision: the route leaves force,
    # and its status error says why. The writer's warning names nothing of billing.
    path = tmp_path / "shop.yaml"
    path.write_text("kind: Namespace\nname: shop\nspec: {export_to: [web]}\n")
    admin = ("--admin", mesh.address, "--token", "edit-shop")
    code, _, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 1 and "FAILED_PRECONDITION" in err and "billing" not in err, err
    code, out, err = await meshctl("apply", "-f", str(path), "--force", *admin)
    assert code == 0, err
    assert out.splitlines() == ["namespace/shop configured"] and "billing" not in err, err
    await mesh.wait_for(lambda: route_key not in state.routes, "billing/buy out of force")
    errors = await stub.ListErrors(pb.ListErrorsRequest(namespace="billing"), metadata=ALL)
    assert [e.field for e in errors.errors] == ["destinations[0].service"]


async def test_dependents_in_unreadable_namespaces_are_counted_not_named(
    admin_mesh_tokens: AdminMesh,
) -> None:
    """The same rule for a service change: shop's editor dropping a subset billing's route
    uses is refused, told that one entry it cannot read depends on it, never which."""
    mesh = admin_mesh_tokens
    stub, state = mesh.stub, mesh.app.controller.state
    web = entry(pb.KIND_SERVICE, "web", {"port": 8080, "subsets": {"v1": {"v": "1"}}}, ns="shop")
    await seed(stub, [*(e for e in SHOP_MESH if e.ref.name != "web"), web], ALL)
    await mesh.wait_for(lambda: len(state.services) == 2 and "public" in state.listeners, "mesh")
    pinned = {**BUY, "destinations": [{"service": "shop/web", "subset": "v1"}]}
    await seed(stub, [entry(pb.KIND_ROUTE, "buy", pinned, ns="billing")], ALL)
    await mesh.wait_for(lambda: f"{mesh.prefix}routes/billing/buy" in state.routes, "in force")

    dropped = entry(pb.KIND_SERVICE, "web", {"port": 8080}, ns="shop")
    code, msg = await rpc_error(
        stub.UpdateEntry(pb.UpdateEntryRequest(entry=dropped), metadata=SHOP)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION, msg
    assert "1 entry of namespaces you cannot read" in msg and "billing" not in msg, msg
    code, msg = await rpc_error(
        stub.UpdateEntry(pb.UpdateEntryRequest(entry=dropped), metadata=ALL)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "routes/billing/buy" in msg, msg
    forced = await stub.UpdateEntry(pb.UpdateEntryRequest(entry=dropped, force=True), metadata=SHOP)
    assert list(forced.dependents) == []


async def test_watch_shows_a_limited_token_its_own_namespace_entries_only(
    admin_mesh_tokens: AdminMesh,
) -> None:
    stub = admin_mesh_tokens.stub
    watch = stub.Watch(pb.WatchRequest(), metadata=SHOP)
    await watch.initial_metadata()
    # billing's entry first, then shop's: the watcher's marker.
    await seed(stub, [entry(pb.KIND_NAMESPACE, "billing", {"default_policy": "deny"})], ALL)
    await seed(stub, [entry(pb.KIND_NAMESPACE, "shop", {"mtls": "strict"})], ALL)
    seen: list[str] = []
    while not any(k.endswith("namespaces/shop") for k in seen):
        event = await asyncio.wait_for(watch.read(), 10)
        assert isinstance(event, pb.WatchResponse)
        seen.append(event.key)
    watch.cancel()
    assert not [k for k in seen if "billing" in k], seen
