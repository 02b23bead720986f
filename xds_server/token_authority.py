"""The join tokens in force and the streams bound to them (``meshd --xds-auth required``).

:class:`TokenAuthority` is the :class:`~xds_server.stream_auth.StreamAuthenticator` the ADS,
HDS and LRS servicers are given. It folds the ``<prefix>tokens/`` keys of etcd (a listing,
then watch events: :meth:`apply`), checks the token each stream presents, binds each
stream's node to its token's identity, and ends the streams of a token that is deleted
(revoked). It also keeps who owns each node id: the identity whose stream named it first,
until its last stream of any kind ends; a newer stream of the same identity and kind
replaces the older one. No I/O but :meth:`run`, which feeds it a registry's updates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field

import grpc

from xds_server.errors import ValidationError
from xds_server.ingest.registry import Changes, Registry, RegistryUpdate, Reset
from xds_server.model.identity import Identity, identity_of_cluster
from xds_server.model.join_token import JoinToken, decode, token_id_of
from xds_server.model.names import ServiceRef
from xds_server.stream_auth import Metadata, StreamPeer, StreamRejected, bearer_token

log = logging.getLogger("meshd.xds_auth")

_UNAUTH = grpc.StatusCode.UNAUTHENTICATED
_DENIED = grpc.StatusCode.PERMISSION_DENIED


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
    ) -> None:
        """``tokens_prefix``: ``<prefix>tokens/``; ``services``: the registered services
        (a node cluster names a sidecar only of one of them)."""
        self.tokens_prefix = tokens_prefix
        self.services = services
        self.clock = clock
        self.tokens: dict[str, JoinToken] = {}
        self.loaded = False
        """A complete listing was folded in (until then every token is refused)."""
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
            for token_id in gone:
                self._revoked(token_id)
            return
        assert isinstance(update, Changes)
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
        if known is None or not known.matches(token):
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
