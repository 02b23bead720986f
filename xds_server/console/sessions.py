"""Console sessions: a token given once at the login form, kept server-side.

The browser holds only a random session id, in an ``HttpOnly``, ``SameSite=Strict`` cookie
(scripts cannot read it, other sites' pages cannot send it); each session has its own
CSRF token, which every write form carries back. The bearer token itself is never sent
to the browser again. Sessions are bounded in number (the least recently used goes) and
end after a quiet spell; a token removed from the tokens file ends its sessions at their
next call (every call is checked by the admin API, as a gRPC client's).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from xds_server.admin.auth import Authenticator, Principal

__all__ = ["COOKIE", "Session", "Sessions"]

COOKIE = "mesh_console"
MAX_SESSIONS = 1024
IDLE_S = 8 * 3600.0


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    id: str
    token: str | None
    """The bearer token the calls carry (None: meshd runs without ``--tokens``)."""
    principal: Principal
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    seen: float = 0.0

    def csrf_ok(self, given: str) -> bool:
        """``given`` is this session's CSRF token (compared in constant time)."""
        return hmac.compare_digest(self.csrf.encode(), given.encode())


class Sessions:
    """The sessions of one console."""

    def __init__(
        self,
        auth: Authenticator,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = MAX_SESSIONS,
        idle_s: float = IDLE_S,
    ) -> None:
        self.auth = auth
        self._clock = clock
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def login(self, token: str | None) -> Session:
        """A new session for ``token``; AdminError (UNAUTHENTICATED) when it is not one
        the admin API takes."""
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        principal = self.auth.principal(metadata)
        session = Session(
            secrets.token_urlsafe(32), token if self.auth.enabled else None, principal
        )
        session.seen = self._clock()
        self._by_id[session.id] = session
        while len(self._by_id) > self.max_sessions:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id`` (None: unknown, or idle too long)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle_s:
            del self._by_id[session_id]
            return None
        session.seen = now
        self._by_id.move_to_end(session_id)
        return session

    def logout(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._by_id)
