"""CheckPolicy: the authorization decision for one caller and request, from the policies in
force, without traffic. Pure: it reads the registry view meshd holds.

The answer is :func:`xds_server.model.policy.decide`, the rule the inbound listeners' RBAC
filters are compiled from (:mod:`xds_server.translate.authz`), so it says what the target's
proxies do.
"""

from __future__ import annotations

import grpc

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.auth import Principal, require
from xds_server.admin.errors import AdminError, invalid
from xds_server.errors import ValidationError
from xds_server.model.identity import parse_identity
from xds_server.model.names import check_label
from xds_server.model.policy import METHODS, decide, default_policy_of
from xds_server.model.view import RegistryView


def check_policy(
    state: RegistryView, who: Principal, request: pb.CheckPolicyRequest
) -> pb.CheckPolicyResponse:
    """The decision for ``request`` (INVALID_ARGUMENT naming the field when it is malformed,
    NOT_FOUND when the target is no registered service)."""
    where = f"{request.source} -> {request.target}"
    try:
        caller = parse_identity(request.source, "source")
        ns, slash, name = request.target.partition("/")
        if not slash:
            raise ValidationError("target", f"{request.target!r} is not 'namespace/service'")
        target = parse_identity(
            f"{check_label(ns, 'target')}/{check_label(name, 'target')}", "target"
        )
    except ValidationError as exc:
        raise invalid(where, exc.field, exc.reason) from None
    path = request.path or "/"
    if not path.startswith("/"):
        raise invalid(where, "path", f"{path!r} must start with '/'")
    method = request.method or "GET"
    if method not in METHODS:
        raise invalid(where, "method", f"{method!r} is not an upper-case HTTP method")
    require(who, "read", ns, request.target)
    ref = target.service
    assert ref is not None
    if ref not in state.services:
        raise AdminError(grpc.StatusCode.NOT_FOUND, f"service {ref} is not registered")
    default = default_policy_of(state.namespaces, ns)
    decision = decide(state.policies.values(), ref, caller, path, method, default)
    return pb.CheckPolicyResponse(
        allowed=decision.allowed,
        policy=decision.policy,
        reason=decision.reason,
        default_policy=default,
        revision=state.revision,
    )
