"""Namespace: settings shared by every service of one namespace (registry
``namespaces/<ns>``).

Today it holds the mTLS default of the namespace's services (``mtls``) and the decision
taken when no authorization policy selects a target (``default_policy``). A namespace with no
entry behaves as ``{"mtls": "off", "default_policy": "allow"}``, so registries written before
these fields existed keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj

MtlsMode = Literal["strict", "permissive", "off"]
MTLS_MODES: tuple[MtlsMode, ...] = ("strict", "permissive", "off")
DefaultPolicy = Literal["allow", "deny"]
DEFAULT_POLICIES: tuple[DefaultPolicy, ...] = ("allow", "deny")


@dataclass(frozen=True, slots=True)
class Namespace:
    """A validated Namespace entry."""

    name: str
    mtls: MtlsMode = "off"
    """The mTLS mode of the namespace's services that do not set their own."""
    default_policy: DefaultPolicy = "allow"
    """What a request to a target no allow policy selects gets (authorization)."""


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
    o.done()
    return Namespace(name, mtls or "off", policy)  # type: ignore[arg-type]
