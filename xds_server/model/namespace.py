"""Namespace: settings shared by every service of one namespace (registry
``namespaces/<ns>``).

Today it holds the mTLS default of the namespace's services (``mtls``), the decision
taken when no authorization policy selects a target (``default_policy``), and which
namespaces' routes may send to its services (``export_to``). A namespace with no entry
behaves as ``{"mtls": "off", "default_policy": "allow", "export_to": ["*"]}``, so registries
written before these fields existed keep working.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj

MtlsMode = Literal["strict", "permissive", "off"]
MTLS_MODES: tuple[MtlsMode, ...] = ("strict", "permissive", "off")
DefaultPolicy = Literal["allow", "deny"]
DEFAULT_POLICIES: tuple[DefaultPolicy, ...] = ("allow", "deny")
_NS_GLOB = re.compile(r"^[a-z0-9*?\[\]!-]{1,63}$")
MAX_GLOBS = 256
"""Namespace globs per ``export_to`` or ``allowed_namespaces`` list."""


def matches_any(namespace: str, globs: tuple[str, ...]) -> bool:
    """Does ``namespace`` match one of ``globs`` (shell-style, case-sensitive)?"""
    return any(g == "*" or fnmatch.fnmatchcase(namespace, g) for g in globs)


def namespace_globs(o: Obj, name: str, *, empty_ok: bool = False) -> tuple[str, ...]:
    """An optional list of namespace globs (default ``["*"]``: every namespace; ``[]``
    only where ``empty_ok``)."""
    items = o.str_list(name)
    if items is None:
        return ("*",)
    if not items and not empty_ok:
        raise ValidationError(name, "must list at least one namespace glob (or be omitted for '*')")
    if len(items) > MAX_GLOBS:
        raise ValidationError(name, f"{len(items)} globs, at most {MAX_GLOBS}")
    for i, glob in enumerate(items):
        if not _NS_GLOB.fullmatch(glob):
            raise ValidationError(f"{name}[{i}]", f"{glob[:80]!r} is not a namespace name or glob")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class Namespace:
    """A validated Namespace entry."""

    name: str
    mtls: MtlsMode = "off"
    """The mTLS mode of the namespace's services that do not set their own."""
    default_policy: DefaultPolicy = "allow"
    """What a request to a target no allow policy selects gets (authorization)."""
    export_to: tuple[str, ...] = ("*",)
    """Globs of the namespaces whose routes may send (or mirror) to this namespace's services
    (besides its own; empty: none)."""

    def exports_to(self, namespace: str) -> bool:
        """May a route of ``namespace`` send to this namespace's services? (Always its own.)"""
        return namespace == self.name or matches_any(namespace, self.export_to)


def effective_mtls(own: MtlsMode | None, namespace: Namespace | None) -> MtlsMode:
    """A service's mTLS mode: its own ``mtls``, else its namespace entry's, else ``off``."""
    if own is not None:
        return own
    return namespace.mtls if namespace is not None else "off"


def mtls_mode(o: Obj, name: str = "mtls") -> MtlsMode | None:
    """An optional ``mtls`` field: ``strict``, ``permissive`` or ``off``."""
    value = o.opt_str(name)
    if value is None:
        return None
    if value not in MTLS_MODES:
        raise ValidationError(o.field(name), f"{value!r} must be one of {', '.join(MTLS_MODES)}")
    return value  # type: ignore[return-value]


def parse_namespace(name: str, o: Obj) -> Namespace:
    """Validate a Namespace value (already decoded) for the namespace its key names."""
    mtls = mtls_mode(o)
    policy = o.str_("default_policy", "allow")
    if policy not in DEFAULT_POLICIES:
        raise ValidationError(
            "default_policy", f"{policy!r} must be one of {', '.join(DEFAULT_POLICIES)}"
        )
    export_to = namespace_globs(o, "export_to", empty_ok=True)  # []: its own namespace only
    o.done()
    return Namespace(name, mtls or "off", policy, export_to)  # type: ignore[arg-type]
