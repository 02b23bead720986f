"""Finding 1 of issue 22 through a real Envoy gateway: routes written with etcd by another
namespace (a catch-all on the shared listener, the default host, a suffix wildcard that
would beat it for a Host with a port, a route to a namespace that does not export to it) are
rejected, and the gateway keeps sending the owner's traffic to the owner's service."""

from __future__ import annotations

from tests.support.behaviour_mesh import Mesh, settle
from tests.support.wait import wait_until


def test_another_namespace_cannot_hijack_the_gateway(mesh: Mesh) -> None:
    ns, auth, secret = mesh.ns, f"{mesh.ns}-auth", f"{mesh.ns}-secret"
    mesh.backend_service("web")
    mesh.route("web-split", [{"service": "web"}])
    for space, name in ((auth, "login"), (secret, "vault")):
        backend = mesh.backend(name)
        mesh.put(f"services/{space}/{name}", {"port": backend.port})
        mesh.put(
            f"endpoints/{space}/{name}/{name}-0", {"address": "127.0.0.1", "port": backend.port}
        )
    login, vault = mesh.backends[-2:]
    mesh.put(f"namespaces/{secret}", {"export_to": [ns]})
    mesh.http_listener()
    mesh.start_envoy()
    mesh.wait_answer(lambda: mesh.get()[1] == "web-0", "default's catch-all")

    to_login = [{"service": f"{auth}/login"}]
    hijacks = {
        "hijack": {"listener": mesh.listener, "destinations": to_login},
        "host": {"listener": "*", "hosts": [f"web.{ns}"], "destinations": to_login},
        "wild": {"listener": "*", "hosts": [f"*{ns[-1]}:{mesh.port}"], "destinations": to_login},
        "vault": {
            "listener": mesh.listener,
            "match": {"prefix": "/vault"},
            "destinations": [{"service": f"{secret}/vault"}],
        },
    }
    for name, spec in hijacks.items():
        mesh.put(f"routes/{auth}/{name}", spec)
    state = mesh.server.app.controller.state
    keys = [f"{mesh.server.registry.prefix}routes/{auth}/{name}" for name in hijacks]
    # Judged (in force or rejected), and the gateway given time to take any change.
    wait_until(lambda: all(k in state.problems or k in state.routes for k in keys), "judged", 10.0)
    settle(1.0)

    for path, host in [
        ("/", None),
        ("/", f"web.{ns}"),
        ("/", f"web.{ns}:{mesh.port}"),
        ("/vault", None),
        ("/anything", f"web.{ns}"),
    ]:
        for _ in range(5):
            status, body, _ = mesh.get(path, {"Host": host} if host else None)
            assert (status, body) == (200, "web-0"), (path, host, status, body)
    assert login.stats()["requests"] == 0 and vault.stats()["requests"] == 0
    assert all(k in state.problems and k not in state.routes for k in keys)
