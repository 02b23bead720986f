"""Console sessions: bounded in number, ended when idle, CSRF compared per session."""

from __future__ import annotations

import pytest

from xds_server.admin.auth import Authenticator, parse_tokens
from xds_server.console.sessions import Sessions
from xds_server.errors import MeshError

AUTH = Authenticator(parse_tokens({"tokens": [{"token": "look", "role": "viewer"}]}))


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_login_checks_the_token_and_keeps_it_server_side() -> None:
    sessions = Sessions(AUTH, clock=Clock())
    with pytest.raises(MeshError, match="unknown token"):
        sessions.login("nope")
    s = sessions.login("look")
    assert s.principal.role == "viewer" and s.token == "look"
    assert "look" not in s.id and "look" not in s.csrf
    assert sessions.get(s.id) is s and sessions.get("forged") is None
    assert s.csrf_ok(s.csrf) and not s.csrf_ok(sessions.login("look").csrf)


def test_sessions_are_bounded_and_end_when_idle() -> None:
    clock = Clock()
    sessions = Sessions(AUTH, clock=clock, max_sessions=3, idle_s=60)
    first, *rest = [sessions.login("look") for _ in range(3)]
    assert sessions.get(first.id) is first  # (used: the least recently used is another)
    sessions.login("look")
    assert len(sessions) == 3 and sessions.get(rest[0].id) is None
    clock.now = 61
    assert sessions.get(first.id) is None  # idle for longer than idle_s
    s = sessions.login("look")
    sessions.logout(s.id)
    assert sessions.get(s.id) is None


def test_without_tokens_every_visitor_is_the_open_principal() -> None:
    s = Sessions(Authenticator(None)).login(None)
    assert s.token is None and s.principal.role == "editor"
