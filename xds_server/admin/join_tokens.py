"""Join tokens over the admin API: create (the token is shown once), list, revoke.

A token is written to etcd as its SHA-256 only (``<prefix>tokens/<id>``); meshd replicas
watch those keys, so a revoke reaches every replica's streams through etcd, like any write.
Who may issue a token for an identity: an editor whose namespaces cover the identity's;
a gateway has no namespace, so only an editor of namespaces ``["*"]``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import grpc
from google.protobuf.message import Message

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Action, Principal
from xds_server.admin.base import Ctx, ServicerBase
from xds_server.admin.errors import AdminError, invalid
from xds_server.admin.proxies import timestamp
from xds_server.errors import ValidationError
from xds_server.model.identity import Identity, check_token_identity, parse_identity
from xds_server.model.join_token import (
    DEFAULT_TTL_S,
    MIN_TTL_S,
    TOKENS_DIR,
    JoinToken,
    check_token_id,
    decode,
    issue,
    token_key,
)

log = logging.getLogger("meshd.admin")


def may(who: Principal, action: Action, identity: Identity) -> bool:
    """``who`` may ``action`` tokens of ``identity`` (a gateway's: namespaces ``*`` only)."""
    if action == "write" and who.role != "editor":
        return False
    return who.covers(identity.namespace)  # ("" for a gateway: needs "*")


def _require(who: Principal, action: Action, identity: Identity) -> None:
    if may(who, action, identity):
        return
    if action == "write" and who.role != "editor":
        reason = "the viewer role cannot write"
    elif identity.kind == "gateway":
        reason = "gateway identities need a token for namespaces ['*']"
    else:
        reason = f"namespace {identity.namespace!r} is outside {list(who.namespaces)}"
    raise AdminError(
        grpc.StatusCode.PERMISSION_DENIED, f"join token for {identity.short()}: {reason}"
    )


def info(token: JoinToken) -> pb.JoinTokenInfo:
    return pb.JoinTokenInfo(
        id=token.id, identity=token.identity.short(), expires=timestamp(token.expires)
    )


class JoinTokenRpcs(ServicerBase):
    """CreateJoinToken, ListJoinTokens, RevokeJoinToken."""

    token_clock: Callable[[], float] = staticmethod(time.time)
    """When tokens are issued (their expiry counts from it)."""

    async def CreateJoinToken(  # noqa: N802
        self, request: pb.CreateJoinTokenRequest, context: Ctx
    ) -> Message:
        async def body(who: Principal) -> Message:
            try:
                identity = check_token_identity(
                    parse_identity(request.identity, "identity"), "identity"
                )
            except ValidationError as exc:
                raise invalid("join token", exc.field, exc.reason) from None
            _require(who, "write", identity)
            ttl = float(request.ttl_seconds) or DEFAULT_TTL_S
            if ttl < MIN_TTL_S:
                raise invalid("join token", "ttl_seconds", f"must be at least {MIN_TTL_S:g}")
            token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
            record, token = issue(token_id, secret, identity, self.token_clock() + ttl)
            # Create-if-absent: ids are random, but a token must never replace another.
            key = token_key(self.prefix, token_id)
            revision = await self.registry.txn(puts={key: record.encode()}, expect={key: 0})
            log.info("join token %s created for %s by %s", token_id, identity.short(), who.label)
            return pb.CreateJoinTokenResponse(info=info(record), token=token, revision=revision)

        return await self._call(context, request, body)

    async def ListJoinTokens(  # noqa: N802
        self, request: pb.ListJoinTokensRequest, context: Ctx
    ) -> Message:
        async def body(who: Principal) -> Message:
            listing = await self.registry.list_prefix(self.prefix + TOKENS_DIR)
            out = pb.ListJoinTokensResponse(revision=listing.revision)
            for entry in listing.entries:
                try:
                    token = decode(entry.key.rpartition("/")[2], entry.value)
                except ValidationError:
                    continue  # admits nobody (meshd logs it)
                if may(who, "read", token.identity):
                    out.tokens.append(info(token))
            return out

        return await self._call(context, request, body)

    async def RevokeJoinToken(  # noqa: N802
        self, request: pb.RevokeJoinTokenRequest, context: Ctx
    ) -> Message:
        async def body(who: Principal) -> Message:
            try:
                token_id = check_token_id(request.id)
            except ValidationError as exc:
                raise invalid("join token", exc.field, exc.reason) from None
            key = token_key(self.prefix, token_id)
            stored = await self.registry.get(key)
            token = None
            if stored is not None:
                try:
                    token = decode(token_id, stored.value)
                except ValidationError:
                    token = None
            if stored is None or (token is not None and not may(who, "read", token.identity)):
                raise AdminError(grpc.StatusCode.NOT_FOUND, f"join token {token_id}: not found")
            if token is not None:
                _require(who, "write", token.identity)
            elif who.role != "editor" or not who.covers(""):
                raise AdminError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"join token {token_id}: an unreadable token needs namespaces ['*']",
                )
            revision = await self.registry.txn(deletes=(key,), expect={key: stored.mod_revision})
            log.info("join token %s revoked by %s", token_id, who.label)
            return pb.RevokeJoinTokenResponse(revision=revision)

        return await self._call(context, request, body)
