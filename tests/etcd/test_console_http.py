"""The web console over plain HTTP, against meshd on real etcd with tokens: login and
sessions, tenancy on every page and the live feed, the split editor refusing what the
admin API refuses (its message on the page), CSRF, and the port's limits. The browser
tests (tests/e2e/test_console_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from google.protobuf.json_format import MessageToDict

from adapters.etcd import EmbeddedEtcd
from tests.support.console_client import Visitor
from tests.support.fixtures_admin import TOKENS, AdminMesh, bearer, entry, running_admin, seed
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Authenticator, parse_tokens
from xds_server.console import Console

SPLIT_PATH = "/routes/shop/split/split"
SPLIT = {
    "listener": "public",
    "destinations": [{"service": "web", "weight": 90}, {"service": "web-v2", "weight": 10}],
}


@pytest.fixture
async def mesh(etcd_shared: EmbeddedEtcd, etcd_prefix: str) -> AsyncIterator[AdminMesh]:
    auth = Authenticator(parse_tokens(TOKENS))
    async with running_admin(etcd_shared, etcd_prefix, auth, console="127.0.0.1:0") as m:
        applied = await seed(
            m.stub,
            [
                entry(pb.KIND_LISTENER, "public", {"port": 10000}),
                entry(pb.KIND_SERVICE, "web", {"port": 80}, ns="shop"),
                entry(pb.KIND_SERVICE, "web-v2", {"port": 80}, ns="shop"),
                entry(pb.KIND_SERVICE, "vault", {"port": 80}, ns="billing"),
                entry(
                    pb.KIND_ENDPOINT, "v0", {"address": "10.9.9.9"}, ns="billing", service="vault"
                ),
                entry(pb.KIND_ROUTE, "split", SPLIT, ns="shop"),
                entry(
                    pb.KIND_ROUTE,
                    "vault",
                    {
                        "listener": "public",
                        "match": {"prefix": "/v"},
                        "destinations": [{"service": "vault"}],
                    },
                    ns="billing",
                ),
            ],
            metadata=bearer("edit-all"),
        )
        await m.wait_for(lambda: m.app.revision >= applied.revision, "the seed in force")
        yield m


def visitor(mesh: AdminMesh) -> Visitor:
    return Visitor(mesh.app.console_port)


async def test_login_session_cookie_and_logout(mesh: AdminMesh) -> None:
    v = visitor(mesh)
    first = await v.get("/services")
    assert first.status == 303 and first.headers["location"].startswith("/login?next=")
    wrong = await v.login("not-a-token")
    assert wrong.status == 401 and "unknown token" in wrong.body
    ok = await v.login("view-shop")
    assert ok.status == 303
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "view-shop" not in cookie
    page = await v.get("/services")
    assert page.status == 200 and "shop/web" in page.body
    out = await v.post("/logout", [("csrf", page.csrf())])
    assert out.status == 303
    assert (await v.get("/services")).status == 303  # the session is gone


async def test_a_namespace_token_sees_nothing_of_another_namespace(mesh: AdminMesh) -> None:
    v = visitor(mesh)
    await v.login("view-shop")
    for path in (
        "/",
        "/services",
        "/topology",
        "/proxies",
        "/events",
        "/policies",
        "/certificates",
        "/services/shop/web",
    ):
        page = await v.get(path)
        assert page.status == 200, (path, page.body[-500:])
        assert "billing" not in page.body and "vault" not in page.body, path
    denied = await v.get("/services/billing/vault")
    assert denied.status == 403 and "outside ['shop']" in denied.body
    assert "10.9.9.9" not in denied.body
    # The same pages with an all-namespaces token do show it (the check can fail).
    admin = visitor(mesh)
    await admin.login("edit-all")
    assert "billing/vault" in (await admin.get("/services")).body


async def test_a_viewer_gets_no_editor_and_its_post_is_refused(mesh: AdminMesh) -> None:
    v = visitor(mesh)
    await v.login("view-shop")
    page = await v.get("/services/shop/web")
    assert "Route shop/split" in page.body and 'class="split"' not in page.body
    reply = await v.post(
        "/routes/shop/split/split",
        [
            ("csrf", page.csrf()),
            ("revision", "0"),
            ("service", "web"),
            ("subset", ""),
            ("weight", "50"),
            ("service", "web-v2"),
            ("subset", ""),
            ("weight", "50"),
            ("back", "/services/shop/web"),
        ],
    )
    assert reply.status == 403 and "the viewer role cannot write" in reply.body
    got = await mesh.stub.GetEntry(
        pb.GetEntryRequest(ref=pb.EntryRef(kind=pb.KIND_ROUTE, namespace="shop", name="split")),
        metadata=bearer("edit-all"),
    )
    weights = [d["weight"] for d in MessageToDict(got.entry.spec)["destinations"]]
    assert weights == [90, 10]


def _split_form(
    page_body: str, csrf: str, weights: list[str], revision: str = ""
) -> list[tuple[str, str]]:
    rev = revision or re.search(r'name="revision" value="(\d+)"', page_body).group(1)  # type: ignore[union-attr]
    fields = [("csrf", csrf), ("revision", rev), ("back", "/services/shop/web")]
    for service, weight in zip(["web", "web-v2"], weights, strict=True):
        fields += [("service", service), ("subset", ""), ("weight", weight)]
    return fields


async def test_the_split_editor_writes_and_refuses_bad_input_with_the_apis_message(
    mesh: AdminMesh,
) -> None:
    v = visitor(mesh)
    await v.login("edit-shop")
    page = await v.get("/services/shop/web")
    assert 'class="split"' in page.body
    csrf = page.csrf()
    saved = await v.post(SPLIT_PATH, _split_form(page.body, csrf, ["50", "50"]))
    assert saved.status == 303, re.findall(r"role=\"alert\"[^<]*", saved.body)
    assert "saved=" in saved.headers["location"]
    after = await v.get(saved.headers["location"])
    assert "Saved the split of shop/split" in after.body and "50%" in after.body
    # The revision the first page was read at is stale now.
    stale = await v.post(SPLIT_PATH, _split_form(page.body, csrf, ["70", "30"]))
    assert stale.status == 409 and "Changed meanwhile, reload" in stale.body
    assert "re-read and retry" in stale.body  # the admin API's own words
    fresh = await v.get("/services/shop/web")
    too_big = await v.post(SPLIT_PATH, _split_form(fresh.body, csrf, ["20000", "1"]))
    assert too_big.status == 400 and "weight" in too_big.body and "10000" in too_big.body
    not_number = await v.post(SPLIT_PATH, _split_form(fresh.body, csrf, ["x", "1"]))
    assert not_number.status == 400 and "destinations[0].weight" in not_number.body
    zero = await v.post(SPLIT_PATH, _split_form(fresh.body, csrf, ["0", "0"]))
    assert zero.status == 400 and "at least one weight must be greater than 0" in zero.body
    other = await v.post(
        "/routes/billing/vault/split",
        [
            ("csrf", csrf),
            ("revision", "0"),
            ("service", "vault"),
            ("subset", ""),
            ("weight", "1"),
            ("back", "/services/shop/web"),
        ],
    )
    assert other.status == 403 and "outside" in other.body and "billing" in other.body
    no_csrf = await v.post(SPLIT_PATH, _split_form(fresh.body, "forged", ["1", "1"]))
    assert no_csrf.status == 403 and "CSRF" in no_csrf.body
    final = await v.get("/services/shop/web")
    assert "50%" in final.body  # nothing refused was written


async def test_the_live_feed_brings_an_etcd_edit_and_only_the_callers(mesh: AdminMesh) -> None:
    v = visitor(mesh)
    await v.login("view-shop")
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.app.console_port)
    writer.write(f"GET /events/stream HTTP/1.1\r\nHost: x\r\nCookie: {v.cookie}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"200 OK" in head and b"text/event-stream" in head
    await reader.readuntil(b"\n\n")  # (retry:)
    await asyncio.sleep(0.3)  # (the seed's own events are out by then)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await mesh.put_json("services/billing/secret-thing", {"port": 1})
    await mesh.put_json("services/shop/new-thing", {"port": 1})
    seen = ""
    while "services/shop/new-thing" not in seen:
        seen += (await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)).decode()
    assert loop.time() - started < 1.0
    assert "secret-thing" not in seen and "billing" not in seen
    writer.close()


async def test_the_console_ports_limits(mesh: AdminMesh) -> None:
    v = visitor(mesh)
    big = await asyncio.to_thread(
        v._request,
        "POST",
        "/login",
        b"x" * (65 * 1024),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert big.status == 413
    redirect = await v.get("/login?next=//evil.example/")
    assert redirect.status == 200 and 'value="/"' in redirect.body  # no open redirect
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.app.console_port)
    writer.write(b"\x16\x03\x01 not http\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(100), 5)).startswith(b"HTTP/1.1 400")
    writer.close()


async def test_an_open_console_is_refused_beyond_loopback() -> None:
    open_admin = type("A", (), {"auth": Authenticator(None)})()
    with pytest.raises(ValueError, match="loopback"):
        await Console(open_admin).start("0.0.0.0:0")


async def test_every_page_labels_its_inputs_and_tables(mesh: AdminMesh) -> None:
    """What a screen reader and a keyboard need: every visible input has a label (or an
    aria-label on its form), every table a caption and column headers, and a link that
    skips to the content; no page needs a script to be read."""
    v = visitor(mesh)
    await v.login("edit-all")
    for path in (
        "/",
        "/services",
        "/services/shop/web",
        "/topology",
        "/proxies",
        "/events",
        "/policies",
        "/certificates",
        "/login",
    ):
        raw = (await v.get(path)).raw
        labels = set(re.findall(r'<label[^>]* for="([^"]+)"', raw))
        for tag in re.findall(r"<input[^>]*>", raw):
            if 'type="hidden"' in tag:
                continue
            ident = re.search(r'id="([^"]+)"', tag)
            inside_label = re.search(r"<label[^>]*>\s*" + re.escape(tag), raw)
            assert (ident and ident.group(1) in labels) or inside_label, (path, tag)
        for table_html in re.findall(r"<table.*?</table>", raw, re.S):
            assert "<caption>" in table_html and 'scope="col"' in table_html, path
        assert 'href="#main"' in raw and '<main id="main"' in raw, path


async def test_redirects_stay_on_the_site_and_logins_are_rate_limited(mesh: AdminMesh) -> None:
    v = visitor(mesh)
    for target in (
        "//evil.example/",
        "/\\evil.example",
        "/\t/evil.example",
        "/x\r\nSet-Cookie: a=b",
        "https://evil.example/",
    ):
        reply = await v.post("/login", [("token", "view-shop"), ("next", target)])
        assert reply.status == 303 and reply.headers["location"] == "/", (target, reply.headers)
    ok = await v.post("/login", [("token", "view-shop"), ("next", "/services/shop/web?x=1")])
    assert ok.headers["location"] == "/services/shop/web?x=1"
    guesser = visitor(mesh)
    codes = [(await guesser.login(f"guess-{i}")).status for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    # (the right token is not even checked meanwhile: the answer tells nothing)
    assert (await guesser.login("edit-all")).status == 429
