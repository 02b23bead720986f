"""Authorization policies (registry ``policies/<ns>/<name>``) and the one decision rule.

A policy selects a target (one service of its namespace, or ``*``: every service of it),
says ``allow`` or ``deny``, and matches requests by caller identity (``from``) and by
path and method (``to``). An absent ``from`` matches every caller, an absent ``to`` every
request. Within ``from`` and ``to`` the items are alternatives; within a ``to`` item,
paths and methods must both match (an absent list matches anything).

:func:`decide` is the rule, written once: :mod:`xds_server.translate.authz` compiles the
same rule into Envoy RBAC, and ``meshctl policy check`` answers with it, so what the check
says is what Envoy does (tests compare both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj
from xds_server.model.identity import Identity, IdentityPattern, parse_identity_pattern
from xds_server.model.names import ServiceRef, check_label
from xds_server.model.namespace import Namespace

Action = Literal["allow", "deny"]
ACTIONS: tuple[Action, ...] = ("allow", "deny")
DEFAULT_POLICY: Action = "allow"
"""What a namespace decides when no policy selects a target (and it says nothing)."""

# The methods RBAC matches on ``:method``; the same list routes accept.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
MAX_ITEMS = 64
"""Items per list (sources, identities, rules, paths): a policy is read by people."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What requests a policy's ``to`` item matches: any of ``paths`` (exact, or a prefix
    when written with a trailing ``*``) and any of ``methods``; empty means any."""

    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()

    def matches(self, path: str, method: str) -> bool:
        """Whether a request of ``path`` (without its query) and ``method`` matches."""
        if self.methods and method not in self.methods:
            return False
        return not self.paths or any(path_matches(p, path) for p in self.paths)


@dataclass(frozen=True, slots=True)
class Policy:
    """One authorization policy in force."""

    namespace: str
    name: str
    target: str
    """A service name of :attr:`namespace`, or ``*`` for every service of it."""
    action: Action
    sources: tuple[tuple[IdentityPattern, ...], ...] | None = None
    """``from``: alternatives, each a list of identity patterns (None: any caller)."""
    rules: tuple[Rule, ...] | None = None
    """``to``: alternatives (None: any request)."""

    @property
    def key_name(self) -> str:
        """``ns/name``: how status, the admin API and decisions name it."""
        return f"{self.namespace}/{self.name}"

    def selects(self, service: ServiceRef) -> bool:
        """Whether this policy applies to requests to ``service``."""
        return service.namespace == self.namespace and self.target in ("*", service.name)

    @property
    def target_ref(self) -> ServiceRef | None:
        """The one service it targets (None: ``*``)."""
        return None if self.target == "*" else ServiceRef(self.namespace, self.target)

    def matches(self, caller: Identity | None, path: str, method: str) -> bool:
        """Whether a request from ``caller`` (None: no verified certificate) matches."""
        if self.sources is not None:
            if caller is None:
                return False
            if not any(p.matches(caller) for source in self.sources for p in source):
                return False
        return self.rules is None or any(r.matches(path, method) for r in self.rules)


def path_matches(pattern: str, path: str) -> bool:
    """``/api/*`` matches what starts with ``/api/``; anything else matches exactly."""
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


def _items(o: Obj, name: str) -> list[tuple[str, object]] | None:
    items = o.list_(name)
    if items is not None and not items:
        raise ValidationError(o.field(name), "must not be empty (leave it out to match any)")
    if items is not None and len(items) > MAX_ITEMS:
        raise ValidationError(o.field(name), f"has {len(items)} items, at most {MAX_ITEMS}")
    return items


def _strings(o: Obj, name: str) -> list[tuple[str, str]] | None:
    items = _items(o, name)
    if items is None:
        return None
    out = []
    for path, item in items:
        if not isinstance(item, str):
            raise ValidationError(path, "must be a string")
        out.append((path, item))
    return out


def _path(field: str, value: str) -> str:
    if not value.startswith("/"):
        raise ValidationError(field, f"{value!r} must start with '/'")
    if "*" in value[:-1]:
        raise ValidationError(field, f"{value!r}: '*' is only allowed last (a prefix)")
    if "?" in value or "#" in value:
        raise ValidationError(field, f"{value!r}: a path has no query or fragment")
    if len(value) > 1024 or not value.isprintable() or " " in value:
        raise ValidationError(field, f"{value!r} is not a printable path of at most 1024")
    return value


def _rule(o: Obj) -> Rule:
    paths = [_path(f, v) for f, v in _strings(o, "paths") or ()]
    methods = []
    for f, v in _strings(o, "methods") or ():
        if v not in METHODS:
            raise ValidationError(
                f, f"{v!r} is not an upper-case HTTP method ({', '.join(METHODS)})"
            )
        methods.append(v)
    o.done()
    return Rule(tuple(sorted(set(paths))), tuple(sorted(set(methods))))


def _source(o: Obj) -> tuple[IdentityPattern, ...]:
    identities = _strings(o, "identities")
    if identities is None:
        raise ValidationError(o.field("identities"), "is required")
    o.done()
    return tuple(sorted({parse_identity_pattern(v, f) for f, v in identities}))


def parse_policy(namespace: str, name: str, o: Obj) -> Policy:
    """Validate a ``policies/<ns>/<name>`` value; raise ValidationError naming the field."""
    target = o.str_("target", required=True)
    if target != "*":
        check_label(target, "target")
    action = o.str_("action", required=True)
    if action not in ACTIONS:
        raise ValidationError("action", f"must be 'allow' or 'deny', not {action!r}")
    sources = _items(o, "from")
    rules = _items(o, "to")
    policy = Policy(
        namespace,
        name,
        target,
        action,  # type: ignore[arg-type]
        None if sources is None else tuple(_source(Obj(v, f)) for f, v in sources),
        None if rules is None else tuple(_rule(Obj(v, f)) for f, v in rules),
    )
    o.done()
    return policy


def default_policy_of(namespaces: Mapping[str, Namespace], namespace: str) -> Action:
    """The namespace's ``default_policy`` (``allow`` without a namespace entry)."""
    entry = namespaces.get(namespace)
    return entry.default_policy if entry is not None else DEFAULT_POLICY


class Decision(NamedTuple):
    """What the rule says of one request, and why."""

    allowed: bool
    policy: str
    """``ns/name`` of the policy that decided; empty when no policy matched."""
    reason: str


def decide(
    policies: Iterable[Policy],
    target: ServiceRef,
    caller: Identity | None,
    path: str = "/",
    method: str = "GET",
    default_policy: Action = DEFAULT_POLICY,
) -> Decision:
    """Whether a request from ``caller`` (None: no verified certificate) to ``target`` for
    ``path`` and ``method`` passes: deny policies win; then, if any allow policy selects the
    target, only what some allow policy matches passes; otherwise ``default_policy`` (the
    target namespace's) decides. Policies are tried in name order, so the one named is
    stable."""
    path = path.partition("?")[0]
    selecting = sorted((p for p in policies if p.selects(target)), key=lambda p: p.name)
    for p in selecting:
        if p.action == "deny" and p.matches(caller, path, method):
            return Decision(False, p.key_name, f"denied by policy {p.key_name}")
    allows = [p for p in selecting if p.action == "allow"]
    for p in allows:
        if p.matches(caller, path, method):
            return Decision(True, p.key_name, f"allowed by policy {p.key_name}")
    if allows:
        names = ", ".join(p.key_name for p in allows)
        return Decision(
            False, "", f"denied: allow policies select {target} ({names}), none matches"
        )
    return Decision(
        default_policy == "allow",
        "",
        f"{'allowed' if default_policy == 'allow' else 'denied'} by the default policy of "
        f"namespace {target.namespace} (no policy selects {target})",
    )
