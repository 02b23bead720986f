"""The join tokens in force and the streams bound to them (``meshd --xds-auth required``).

:class:`TokenAuthority` is the :class:`~xds_server.stream_auth.StreamAuthenticator` the ADS,
HDS and LRS servicers are given. It folds the ``<prefix>tokens/`` keys of etcd (a listing,
then watch events: :meth:`apply`), checks the token each stream presents, binds each
stream's node to its token's identity, and ends the streams of a token that is deleted
(revoked). It also keeps who owns each node id: the identity whose stream named it first,
until its last stream of any kind ends; a newer stream of the same identity and kind
replaces the older one.

A token issued a moment ago may not have reached this replica's watch yet (another replica
answered ``CreateJoinToken``, or this replica's watch is behind a burst of registry
writes), while the proxy it was made for connects at once. So a well-formed token this
replica does not know is looked up in the registry before it is refused
(:meth:`TokenAuthority.look_up`), at most :data:`LOOKUPS_PER_S` a second for the whole
replica, so that made-up tokens cannot turn into a flood of etcd reads. No I/O but
:meth:`run`, which feeds it a registry's updates, and that lookup, given as a callable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field

import grpc

from xds_server.errors import ValidationError
from xds_server.ingest.registry import Changes, Entry, Registry, RegistryUpdate, Reset
from xds_server.model.identity import Identity, identity_of_cluster
from xds_server.model.join_token import JoinToken, decode, token_id_of
from xds_server.model.names import ServiceRef
from xds_server.stream_auth import (
    Metadata,
    StreamPeer,
    StreamRejected,
    UnknownToken,
    bearer_token,
)
from xds_server.stream_limits import TokenBucket

log = logging.getLogger("meshd.xds_auth")

_UNAUTH = grpc.StatusCode.UNAUTHENTICATED
_DENIED = grpc.StatusCode.PERMISSION_DENIED

LOOKUPS_PER_S = 20.0
"""Registry reads for tokens this replica does not know, a second, sustained (the whole
replica); past them, such a token is refused as unknown without a read."""
LOOKUP_BURST = 20
"""... and at once, above that rate: a fleet of proxies starting with new tokens."""


@dataclass(slots=True)
class _Owner:
    """Who holds a node id, and its streams by kind."""

    identity: Identity
    streams: dict[str, StreamPeer] = field(default_factory=dict)


class TokenAuthority:
    """Join tokens from the registry; authenticates and binds xDS streams."""

    def __init__(
        self,
        tokens_prefix: str,
        services: Callable[[], Container[ServiceRef]],
        clock: Callable[[], float] = time.time,
        *,
        lookup: Callable[[str], Awaitable[Entry | None]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``tokens_prefix``: ``<prefix>tokens/``; ``services``: the registered services
        (a node cluster names a sidecar only of one of them); ``lookup``: reads one key of
        the registry (None: a token is known only once the watch brought it)."""
        self.tokens_prefix = tokens_prefix
        self.services = services
        self.clock = clock
        self.lookup = lookup
        self.monotonic = monotonic
        self.tokens: dict[str, JoinToken] = {}
        self.loaded = False
        """A complete listing was folded in (until then every token is refused)."""
        self.revision = 0
        """The registry revision the tokens in force are of (the last update folded)."""
        self.lookups = 0
        """Tokens looked up in the registry so far (:meth:`look_up`)."""
        self.lookups_refused = 0
        """Unknown tokens refused without a lookup: over :data:`LOOKUPS_PER_S`."""
        self._allowance = TokenBucket(LOOKUPS_PER_S, LOOKUP_BURST, monotonic())
        self._looking: dict[str, asyncio.Future[bool]] = {}
        self._listing: dict[str, JoinToken] | None = None
        self._peers: dict[str, set[StreamPeer]] = {}  # token id -> its live streams
        self._owners: dict[str, _Owner] = {}  # node id -> owner

    # -- the tokens in force -------------------------------------------------------------

    def apply(self, update: RegistryUpdate) -> None:
        """Fold a listing (possibly in parts) or watch events of the tokens prefix."""
        if isinstance(update, Reset):
            if self._listing is None or update.part == 0:
                self._listing = {}
            for e in update.entries:
                token = self._decode(e.key, e.value)
                if token is not None:
                    self._listing[token.id] = token
            if update.more:
                return
            listed, self._listing = self._listing, None
            gone = set(self.tokens) - set(listed)
            self.tokens = listed
            self.loaded = True
            self.revision = update.revision
            for token_id in gone:
                self._revoked(token_id)
            return
        assert isinstance(update, Changes)
        self.revision = max(self.revision, update.revision)
        for ev in update.events:
            token_id = ev.key[len(self.tokens_prefix) :]
            if ev.kind == "put":
                token = self._decode(ev.key, ev.value)
                if token is not None:
                    self.tokens[token.id] = token
                    continue
            if self.tokens.pop(token_id, None) is not None:
                self._revoked(token_id)

    def _decode(self, key: str, value: bytes) -> JoinToken | None:
        """A stored token, or None (logged, naming the key and field) when it is not one:
        such a key admits nobody."""
        if not key.startswith(self.tokens_prefix):
            return None
        try:
            return decode(key[len(self.tokens_prefix) :], value)
        except ValidationError as exc:
            log.warning("ignoring join token %s: %s: %s", key, exc.field or "value", exc.reason)
            return None

    def _revoked(self, token_id: str) -> None:
        for peer in list(self._peers.pop(token_id, ())):
            peer.end(_UNAUTH, f"join token {token_id} was revoked")
        log.info("join token %s revoked", token_id)

    # -- tokens this replica has not heard of yet ----------------------------------------------

    async def look_up(self, metadata: Metadata | None) -> bool:
        """Whether the stream's token, unknown here when it was checked, is in force after
        all: read from the registry when the watch has not brought it yet (at most
        :data:`LOOKUPS_PER_S` reads a second; one read for streams presenting the same one).
        The caller then authenticates the stream again."""
        token = bearer_token(metadata)
        token_id = token_id_of(token) if token is not None else None
        if token_id is None or self.lookup is None or not self.loaded:
            return False
        if token_id in self.tokens:
            return True  # (the watch brought it meanwhile)
        pending = self._looking.get(token_id)
        if pending is None:
            if not self._allowance.take_if_any(self.monotonic()):
                self.lookups_refused += 1
                return False
            self.lookups += 1
            pending = asyncio.ensure_future(self._fetch(token_id))
            self._looking[token_id] = pending
            pending.add_done_callback(lambda _: self._looking.pop(token_id, None))
        return await asyncio.shield(pending)

    async def _fetch(self, token_id: str) -> bool:
        assert self.lookup is not None
        try:
            entry = await self.lookup(self.tokens_prefix + token_id)
        except Exception as exc:  # (the registry unreachable: refused as unknown, as before)
            log.warning("join token %s: looking it up failed: %s", token_id, exc)
            return False
        if token_id in self.tokens:
            return True
        # The watch is ordered: once it has passed the revision that wrote this token, what
        # it holds is in force (a token read here and revoked since is not taken back in).
        # During a relist the listing decides: a token added now would be dropped with it.
        if entry is None or entry.mod_revision <= self.revision or self._listing is not None:
            return False
        token = self._decode(entry.key, entry.value)
        if token is None or token.id != token_id:
            return False
        self.tokens[token_id] = token
        log.info("join token %s read from the registry before the watch brought it", token_id)
        return True

    async def run(self, source: Registry) -> None:
        """Fold ``source``'s updates in until cancelled (``source``: a registry whose prefix
        is the tokens prefix, so it lists and watches only tokens)."""
        async for update in source.updates():
            self.apply(update)

    # -- StreamAuthenticator ----------------------------------------------------------------

    def authenticate(self, metadata: Metadata | None) -> StreamPeer:
        """The peer of a new stream, from its bearer token."""
        token = bearer_token(metadata)
        if token is None:
            raise StreamRejected(
                _UNAUTH, "missing join token (metadata 'authorization: Bearer <token>')"
            )
        if not self.loaded:
            raise StreamRejected(grpc.StatusCode.UNAVAILABLE, "join tokens not loaded yet")
        token_id = token_id_of(token)
        known = self.tokens.get(token_id) if token_id is not None else None
        if known is None:
            raise UnknownToken(_UNAUTH, "unknown or revoked join token")
        if not known.matches(token):
            raise StreamRejected(_UNAUTH, "unknown or revoked join token")
        if known.expired(self.clock()):
            raise StreamRejected(_UNAUTH, f"join token {known.id} has expired")
        peer = StreamPeer(known.identity.short(), known.id)
        self._peers.setdefault(known.id, set()).add(peer)
        return peer

    def claim(self, peer: StreamPeer, kind: str, node_id: str, node_cluster: str) -> None:
        """Bind ``peer``'s stream to its node (see the protocol)."""
        claim = (kind, node_id, node_cluster)
        if peer.claimed == claim:
            return  # (a later request naming the same node again)
        token = self.tokens.get(peer.token_id)
        if token is None:  # revoked since the stream opened
            raise StreamRejected(_UNAUTH, f"join token {peer.token_id} was revoked")
        actual = identity_of_cluster(node_cluster, self.services())
        if actual != token.identity:
            raise StreamRejected(
                _DENIED,
                f"node cluster {node_cluster!r} is identity {actual.short()}, "
                f"but the join token is for {token.identity.short()}",
            )
        owner = self._owners.get(node_id)
        if owner is not None and owner.identity != token.identity:
            raise StreamRejected(
                _DENIED,
                f"node id {node_id!r} is held by identity {owner.identity.short()}, "
                f"not {token.identity.short()}",
            )
        if peer.claimed is not None:
            self._unclaim(peer)
        if owner is None:
            owner = self._owners[node_id] = _Owner(token.identity)
        older = owner.streams.get(kind)
        if older is not None and older is not peer:
            older.claimed = None
            older.end(grpc.StatusCode.ABORTED, f"a newer {kind} stream took node id {node_id!r}")
        owner.streams[kind] = peer
        peer.claimed = claim

    def release(self, peer: StreamPeer) -> None:
        """``peer``'s stream ended."""
        peers = self._peers.get(peer.token_id)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._peers[peer.token_id]
        if peer.claimed is not None:
            self._unclaim(peer)

    def _unclaim(self, peer: StreamPeer) -> None:
        assert peer.claimed is not None
        kind, node_id, _ = peer.claimed
        peer.claimed = None
        owner = self._owners.get(node_id)
        if owner is not None and owner.streams.get(kind) is peer:
            del owner.streams[kind]
            if not owner.streams:
                del self._owners[node_id]

    def owner(self, node_id: str) -> str | None:
        """The identity holding ``node_id`` (short form), if any stream holds it."""
        owner = self._owners.get(node_id)
        return owner.identity.short() if owner is not None else None
