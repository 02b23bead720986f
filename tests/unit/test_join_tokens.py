"""Join tokens and the token authority, in process: records, TTLs, stream binding,
node-id ownership and revocation (the clock and the registry updates are given)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xds_server.errors import ValidationError
from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.model.identity import gateway, sidecar
from xds_server.model.join_token import JoinToken, decode, issue, parse_ttl, token_key
from xds_server.model.names import ServiceRef
from xds_server.stream_auth import StreamRejected, UnknownToken, admit, bearer_token
from xds_server.token_authority import LOOKUP_BURST, LOOKUPS_PER_S, TokenAuthority

PREFIX = "/mesh/"
WEB = ServiceRef("shop", "web")
NOW = 1_800_000_000.0


def test_ttls() -> None:
    assert parse_ttl("5s") == 5 and parse_ttl("10m") == 600 and parse_ttl("24h") == 86400
    for bad in ("4s", "1d", "", "1.5h", "-5s"):
        with pytest.raises(ValidationError):
            parse_ttl(bad)


def test_a_record_round_trips_and_holds_no_secret() -> None:
    record, token = issue("0123456789ab", "s3cret-s3cret", sidecar(WEB), NOW + 60)
    assert token == "0123456789ab.s3cret-s3cret"
    value = record.encode()
    assert b"s3cret" not in value
    back = decode("0123456789ab", value)
    assert back == record and back.matches(token) and not back.matches(token + "x")
    for value, field in (
        (b"[]", ""),
        (b'{"hash": "md5:x", "identity": "shop/web", "expires": "2026-01-01T00:00:00Z"}', "hash"),
        (
            b'{"hash": "sha256:' + b"0" * 64 + b'", "identity": "shop/*", "expires": "x"}',
            "identity",
        ),
        (b'{"extra": 1}', "extra"),
    ):
        with pytest.raises(ValidationError) as info:
            decode("0123456789ab", value)
        assert info.value.field == field


def test_a_gateway_named_like_a_sidecar_gets_no_token() -> None:
    """``gateway:api.shop`` is a gateway only until ``shop/api`` is registered: its token
    would then authenticate api's sidecar. Neither issued nor read from etcd."""
    value = (
        b'{"hash": "sha256:' + b"0" * 64 + b'", "identity": "gateway:api.shop", '
        b'"expires": "2026-01-01T00:00:00Z"}'
    )
    with pytest.raises(ValidationError) as err:
        decode("0123456789ab", value)
    assert err.value.field == "identity" and "shop/api" in err.value.reason
    for fine in ("gateway:public", "gateway:edge.prod.example", "gateway:Edge.shop"):
        decode("0123456789ab", value.replace(b"gateway:api.shop", fine.encode()))


def test_bearer_token() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([]) is None and bearer_token(None) is None


def authority(*tokens: tuple[str, str]) -> TokenAuthority:
    auth = TokenAuthority(PREFIX + "tokens/", lambda: {WEB}, clock=lambda: NOW)
    auth.apply(Reset(1, tuple(Entry(token_key(PREFIX, k), v, 1) for k, v in tokens)))
    return auth


def rejected(call: object, *args: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(StreamRejected) as info:
        call(*args)  # type: ignore[operator]
    return info.value.code, info.value.message


def test_streams_bind_to_their_token_and_revocation_ends_them() -> None:
    web, web_token = issue("aaaaaaaaaaaa", "w" * 43, sidecar(WEB), NOW + 60)
    gw, gw_token = issue("bbbbbbbbbbbb", "g" * 43, gateway("public"), NOW + 60)
    old, old_token = issue("cccccccccccc", "o" * 43, gateway("public"), NOW - 1)
    auth = authority(*((t.id, t.encode()) for t in (web, gw, old)))
    meta = lambda token: [("authorization", f"Bearer {token}")]  # noqa: E731

    assert rejected(auth.authenticate, [])[0] == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in rejected(auth.authenticate, meta(old_token))[1]
    assert rejected(auth.authenticate, meta(web_token + "x"))[0] == grpc.StatusCode.UNAUTHENTICATED

    peer = auth.authenticate(meta(web_token))
    code, message = rejected(auth.claim, peer, "ads", "n1", "public")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "gateway:public" in message
    auth.claim(peer, "ads", "n1", "web.shop")
    thief = auth.authenticate(meta(gw_token))
    code, message = rejected(auth.claim, thief, "ads", "n1", "public")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "held by identity shop/web" in message

    woken: list[str] = []
    peer.on_end(lambda: woken.append("ads"))
    newer = auth.authenticate(meta(web_token))
    auth.claim(newer, "ads", "n1", "web.shop")
    assert woken == ["ads"] and peer.ended is not None
    assert peer.ended.code == grpc.StatusCode.ABORTED
    auth.release(peer)
    assert auth.owner("n1") == "shop/web"  # the newer stream still holds it

    auth.apply(Changes(2, (Event("delete", token_key(PREFIX, web.id), b"", 2),)))
    assert newer.ended is not None and newer.ended.code == grpc.StatusCode.UNAUTHENTICATED
    auth.release(newer)
    assert auth.owner("n1") is None
    assert rejected(auth.authenticate, meta(web_token))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_a_relist_that_drops_a_token_revokes_it() -> None:
    gw, gw_token = issue("bbbbbbbbbbbb", "g" * 43, gateway("public"), NOW + 60)
    auth = authority((gw.id, gw.encode()))
    peer = auth.authenticate([("authorization", f"Bearer {gw_token}")])
    auth.apply(Reset(5, (), part=0, more=False))
    assert peer.ended is not None and "revoked" in peer.ended.message


class Store:
    """The registry's token keys as a lookup reads them (counting the reads)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.reads = 0

    def put(self, token: JoinToken, revision: int) -> None:
        key = token_key(PREFIX, token.id)
        self.entries[key] = Entry(key, token.encode(), revision)

    async def get(self, key: str) -> Entry | None:
        self.reads += 1
        await asyncio.sleep(0)  # (a real read: the caller waits for it)
        return self.entries.get(key)


def looking_up(store: Store, now: list[float]) -> TokenAuthority:
    auth = TokenAuthority(
        PREFIX + "tokens/", lambda: {WEB}, lambda: NOW, lookup=store.get, monotonic=lambda: now[0]
    )
    auth.apply(Reset(10, ()))
    return auth


def bearer(token: str) -> list[tuple[str, str | bytes]]:
    return [("authorization", f"Bearer {token}")]


async def test_a_token_the_watch_has_not_brought_yet_is_read_from_the_registry() -> None:
    store, now = Store(), [0.0]
    auth = looking_up(store, now)
    web, web_token = issue("aaaaaaaaaaaa", "w" * 43, sidecar(WEB), NOW + 60)
    store.put(web, 11)  # written at revision 11; the watch is still at 10
    with pytest.raises(UnknownToken):
        auth.authenticate(bearer(web_token))
    peer = await admit(auth, bearer(web_token))
    assert peer.identity == "shop/web" and store.reads == 1
    assert (await admit(auth, bearer(web_token))).identity == "shop/web"
    assert store.reads == 1  # held since, as if the watch had brought it
    # The watch then brings it, and its revocation, as usual.
    auth.apply(Changes(11, (Event("put", token_key(PREFIX, web.id), web.encode(), 11),)))
    auth.apply(Changes(12, (Event("delete", token_key(PREFIX, web.id), b"", 12),)))
    assert peer.ended is not None and "revoked" in peer.ended.message


async def test_a_lookup_takes_no_token_the_watch_has_passed() -> None:
    """Read just before its revocation, a token must not come back once the watch has
    folded that revocation in: the watch, ordered, decides from the token's revision on."""
    store, now = Store(), [0.0]
    auth = looking_up(store, now)
    web, web_token = issue("aaaaaaaaaaaa", "w" * 43, sidecar(WEB), NOW + 60)
    store.put(web, 9)  # an old read: the watch (at 10) is past its revision
    assert not await auth.look_up(bearer(web_token))
    with pytest.raises(UnknownToken):
        await admit(auth, bearer(web_token))
    # Tokens without a well-formed id, and a wrong secret for a token in force, read nothing.
    reads = store.reads
    for wrong in ("not-a-token", "aaaaaaaaaaaa.", "zz.secret"):
        assert not await auth.look_up(bearer(wrong))
    gw, gw_token = issue("bbbbbbbbbbbb", "g" * 43, gateway("public"), NOW + 60)
    auth.apply(Changes(11, (Event("put", token_key(PREFIX, gw.id), gw.encode(), 11),)))
    with pytest.raises(StreamRejected) as info:
        await admit(auth, bearer(gw_token + "x"))
    assert not isinstance(info.value, UnknownToken)
    assert store.reads == reads


async def test_made_up_tokens_are_read_at_a_bounded_rate_and_once_each() -> None:
    store, now = Store(), [0.0]
    auth = looking_up(store, now)
    made_up = [bearer(f"{i:012x}.{'x' * 43}") for i in range(3 * LOOKUP_BURST)]
    results = await asyncio.gather(*(auth.look_up(m) for m in made_up))
    assert not any(results)
    assert store.reads == auth.lookups == LOOKUP_BURST
    assert auth.lookups_refused == 2 * LOOKUP_BURST
    now[0] += 1.0  # one second later: LOOKUPS_PER_S more
    await asyncio.gather(*(auth.look_up(m) for m in made_up))
    assert store.reads == LOOKUP_BURST + int(LOOKUPS_PER_S)
    # Streams presenting the same unknown token at once share one read.
    now[0] += 10.0
    web, web_token = issue("bbbbbbbbbbbb", "w" * 43, sidecar(WEB), NOW + 60)
    store.put(web, 11)
    reads = store.reads
    found = await asyncio.gather(*(auth.look_up(bearer(web_token)) for _ in range(5)))
    assert all(found) and store.reads == reads + 1
