"""Bearer tokens, roles and namespace scopes of the admin API (``meshd --tokens FILE``).

Tokens file, YAML or JSON (``docs/admin-api.md``)::

    {"tokens": [{"token": "s3cret", "role": "editor", "namespaces": ["*"]},
                {"token": "look", "role": "viewer", "namespaces": ["auth"]}]}

``viewer`` reads and watches; ``editor`` also writes. Namespaces are globs. Listeners
have no namespace: writing one needs a token whose globs include ``"*"``; any valid
token may read them (routes attach to them, so every team needs to see them).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

from xds_server.admin.errors import AdminError
from xds_server.errors import ValidationError
from xds_server.model.fields import Obj

log = logging.getLogger("meshd.admin")

Role = Literal["viewer", "editor"]
Action = Literal["read", "write"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role and the namespace globs it covers."""

    role: Role
    namespaces: tuple[str, ...]
    label: str = ""  # for logs: "token #2", never the token itself

    def covers(self, namespace: str) -> bool:
        """``namespace`` is in scope ("" = cluster-wide, e.g. listeners: needs ``*``)."""
        if not namespace:
            return "*" in self.namespaces
        return any(fnmatch.fnmatchcase(namespace, g) for g in self.namespaces)

    def may(self, action: Action, namespace: str) -> bool:
        if action == "write" and self.role != "editor":
            return False
        if action == "read" and not namespace:
            return True  # listeners, proxy status: visible to every valid token
        return self.covers(namespace)


OPEN = Principal("editor", ("*",), "open (no --tokens)")
"""Everyone, when meshd runs without ``--tokens`` (allowed on loopback only)."""


def parse_tokens(data: object, source: str = "tokens file") -> list[tuple[str, Principal]]:
    """Validate a decoded tokens document; ValidationError names the field."""
    root = Obj(data)
    items = root.list_("tokens")
    root.done()
    if items is None:
        raise ValidationError("tokens", "is required")
    out: list[tuple[str, Principal]] = []
    seen: set[str] = set()
    for i, (path, item) in enumerate(items):
        obj = Obj(item, path)
        token = obj.str_("token", required=True)
        role = obj.str_("role", required=True)
        namespaces = obj.str_list("namespaces")
        obj.done()
        if len(token) < 4:
            raise ValidationError(obj.field("token"), "must be at least 4 characters")
        if token in seen:
            raise ValidationError(obj.field("token"), "is listed twice")
        seen.add(token)
        if role not in ("viewer", "editor"):
            raise ValidationError(obj.field("role"), f"must be viewer or editor, got {role!r}")
        if namespaces is not None and not namespaces:
            raise ValidationError(obj.field("namespaces"), "must not be empty")
        globs = tuple(namespaces) if namespaces is not None else ("*",)
        out.append((token, Principal(role, globs, f"token #{i + 1} ({role})")))  # type: ignore[arg-type]
    return out


def load_tokens(path: str | Path) -> Authenticator:
    """Read a tokens file; ValueError with the file and field on any problem."""
    return Authenticator(read_tokens(path))


def read_tokens(path: str | Path) -> list[tuple[str, Principal]]:
    """The tokens of a tokens file; ValueError with the file and field on any problem."""
    import yaml  # (here: importing PyYAML slows every meshd start, most without tokens)

    try:
        data = yaml.safe_load(Path(path).read_text())
        return parse_tokens(data)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read tokens file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML or JSON: {exc}") from None
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc.field}: {exc.reason}") from None


class Authenticator:
    """Maps call metadata (``authorization: Bearer <token>``) to a :class:`Principal`."""

    def __init__(self, tokens: Iterable[tuple[str, Principal]] | None) -> None:
        """``None``: no authentication (every call is :data:`OPEN`)."""
        self.enabled = tokens is not None
        self._tokens = [(t.encode(), p) for t, p in (tokens or ())]
        self.generation = 0
        """Counts :meth:`replace` calls."""
        self._changed = asyncio.Event()

    def replace(self, tokens: Iterable[tuple[str, Principal]]) -> None:
        """Take ``tokens`` in place of those held: calls from now on are checked against
        them (a removed token is UNAUTHENTICATED at once; streams it opened, such as a
        ``Watch``, keep running until they end)."""
        if not self.enabled:
            raise ValueError("an open admin API (no --tokens) cannot take tokens")
        self._tokens = [(t.encode(), p) for t, p in tokens]
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, generation: int) -> None:
        """Return once the tokens are no longer those of ``generation`` (long calls such
        as ``Watch`` then check their caller again)."""
        while self.generation == generation:
            await self._changed.wait()

    def reload(self, path: str | Path) -> bool:
        """Read the tokens file again (meshd does on SIGHUP). A file that does not read or
        parse leaves the tokens held in force and says why in one log line; False then."""
        try:
            tokens = read_tokens(path)
        except ValueError as exc:
            # One line, however the parser words it (YAML errors span several).
            why = " ".join(str(exc).split())[:500]
            log.error("tokens file not reloaded, the previous tokens stay in force: %s", why)
            return False
        self.replace(tokens)
        log.info("tokens file %s reloaded: %d tokens", path, len(tokens))
        return True

    def principal(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        """Who calls; UNAUTHENTICATED when the token is missing or unknown."""
        if not self.enabled:
            return OPEN
        header = ""
        for key, value in metadata or ():
            if key.lower() == "authorization":
                header = value.decode() if isinstance(value, bytes) else value
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AdminError(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing bearer token (metadata 'authorization: Bearer <token>')",
            )
        given = token.strip().encode()
        for known, principal in self._tokens:
            # compare_digest: the time taken does not tell how much of a token matched.
            if hmac.compare_digest(known, given):
                return principal
        raise AdminError(grpc.StatusCode.UNAUTHENTICATED, "unknown token")


def require(principal: Principal, action: Action, namespace: str, what: str) -> None:
    """PERMISSION_DENIED unless ``principal`` may do ``action`` in ``namespace``."""
    if principal.may(action, namespace):
        return
    if action == "write" and principal.role != "editor":
        reason = "the viewer role cannot write"
    elif namespace:
        reason = f"namespace {namespace!r} is outside {list(principal.namespaces)}"
    else:
        reason = "cluster-wide entries (listeners) need a token for namespaces ['*']"
    raise AdminError(grpc.StatusCode.PERMISSION_DENIED, f"{what}: {reason}")
