"""Authorization policies through the real ``meshctl`` process against a real meshd and etcd:
apply, get, ``policy check`` (the decision, the policy that took it, the namespace default),
status errors of a bad policy, delete."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.fixtures_admin import AdminMesh
from tests.support.meshctl import meshctl

MANIFEST = """
kind: Service
namespace: auth
name: user-service
spec: {port: 15006, sidecar: {inbound_port: 15006, app_port: 8080}}
---
kind: Policy
namespace: auth
name: no-cart
spec: {target: user-service, action: deny, from: [{identities: [shop/cart]}]}
---
kind: Policy
namespace: auth
name: web-reads
spec:
  target: user-service
  action: allow
  from: [{identities: [shop/web, gateway:public]}]
  to: [{paths: [/api/*], methods: [GET]}]
"""


async def _check(admin: tuple[str, ...], *args: str) -> dict[str, object]:
    code, out, err = await meshctl("policy", "check", *args, "-o", "json", *admin)
    assert code == 0, err
    doc: dict[str, object] = json.loads(out)
    return doc


async def test_policy_apply_check_get_delete(admin_mesh: AdminMesh, tmp_path: Path) -> None:
    admin = ("--admin", admin_mesh.address)
    path = tmp_path / "policies.yaml"
    path.write_text(MANIFEST)
    code, out, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 0, err
    assert out.splitlines() == [
        "service/auth/user-service created",
        "policy/auth/no-cart created",
        "policy/auth/web-reads created",
    ]
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: len(state.policies) == 2, "both policies in force")

    # Deny wins; then only what the allow policy matches passes.
    code, out, err = await meshctl(
        "policy", "check", "--from", "shop/cart", "--to", "auth/user-service", *admin
    )
    assert code == 0, err
    assert out.splitlines() == [
        "deny",
        "policy: auth/no-cart",
        "reason: denied by policy auth/no-cart",
    ]
    web = await _check(
        admin, "--from", "shop/web", "--to", "auth/user-service", "--path", "/api/users"
    )
    assert (web["allowed"], web["policy"]) == (True, "auth/web-reads")
    post = await _check(
        admin, "--from", "shop/web", "--to", "auth/user-service", "--path", "/api/users",
        "--method", "POST",
    )  # fmt: skip
    assert post["allowed"] is False and post["policy"] == ""
    gw = await _check(
        admin, "--from", "gateway:public", "--to", "auth/user-service", "--path", "/api/x"
    )
    assert gw["allowed"] is True

    code, out, _ = await meshctl("get", "policies", "-n", "auth", *admin)
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TARGET", "ACTION", "FROM", "TO", "REVISION"]
    assert lines[2].split()[:6] == [
        "auth", "web-reads", "user-service", "allow", "shop/web,gateway:public", "GET",
    ]  # fmt: skip

    # Without policies, the namespace's default decides (allow when it says nothing).
    for name in ("no-cart", "web-reads"):
        code, _, err = await meshctl("delete", "policy", name, "-n", "auth", *admin)
        assert code == 0, err
    await admin_mesh.wait_for(lambda: not state.policies, "the policies gone")
    code, out, _ = await meshctl(
        "policy", "check", "--from", "shop/cart", "--to", "auth/user-service", *admin
    )
    assert out.splitlines()[:2] == ["allow", "policy: (namespace default: allow)"]


async def test_bad_policies_are_refused_naming_the_field(
    admin_mesh: AdminMesh, tmp_path: Path
) -> None:
    admin = ("--admin", admin_mesh.address)
    path = tmp_path / "bad.yaml"
    path.write_text(
        "kind: Policy\nnamespace: auth\nname: typo\n"
        "spec: {target: '*', action: allow, to: [{methods: [get]}]}\n"
    )
    code, _, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 1 and "to[0].methods[0]" in err, err
    path.write_text(
        "kind: Policy\nnamespace: auth\nname: ghost\nspec: {target: nobody, action: deny}\n"
    )
    code, _, err = await meshctl("apply", "-f", str(path), *admin)
    assert code == 1 and "target" in err and "auth/nobody" in err, err

    # An etcdctl-style edit that bypasses the API: rejected with a status error.
    await admin_mesh.put_json("policies/auth/ghost", {"target": "nobody", "action": "deny"})
    state = admin_mesh.app.controller.state
    key = f"{admin_mesh.prefix}policies/auth/ghost"
    await admin_mesh.wait_for(lambda: key in state.problems, "the policy rejected")
    assert state.problems[key].field == "target"
    code, out, _ = await meshctl("errors", "-o", "json", *admin)
    assert any(e["key"] == key and e["field"] == "target" for e in json.loads(out)["errors"])

    # Bad questions name their flag's field.
    code, _, err = await meshctl("policy", "check", "--from", "web", "--to", "auth/x", *admin)
    assert code == 1 and "source" in err, err
    code, _, err = await meshctl(
        "policy", "check", "--from", "shop/web", "--to", "auth/nobody", *admin
    )
    assert code == 1 and "NOT_FOUND" in err, err
