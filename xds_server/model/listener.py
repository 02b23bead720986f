"""Listener: an address a set of proxies listens on (registry ``listeners/<name>``)."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from typing import Literal

from xds_server.errors import ValidationError
from xds_server.model.fields import Obj
from xds_server.model.names import DEFAULT_NAMESPACE, ServiceRef, parse_service_ref


@dataclass(frozen=True, slots=True)
class Listener:
    """A validated Listener entry. ``service`` is set exactly for ``tcp`` listeners."""

    name: str
    address: str = "0.0.0.0"
    port: int = 0
    protocol: Literal["http", "tcp"] = "http"
    nodes: tuple[str, ...] = ("*",)
    service: ServiceRef | None = None

    def serves(self, node_cluster: str) -> bool:
        """True when a node whose ``cluster`` is ``node_cluster`` gets this listener."""
        return any(fnmatch.fnmatchcase(node_cluster, glob) for glob in self.nodes)


def parse_listener(name: str, o: Obj) -> Listener:
    """Validate a Listener value for the listener named by its key."""
    address = o.str_("address", "0.0.0.0")
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise ValidationError("address", f"{address!r} is not an IP address") from None
    port = o.int_("port", lo=1, hi=65535)
    protocol = o.str_("protocol", "http")
    if protocol not in ("http", "tcp"):
        raise ValidationError("protocol", "must be http or tcp")
    nodes = o.str_list("nodes")
    if nodes is not None and not nodes:
        raise ValidationError("nodes", "must list at least one glob (or be omitted for '*')")
    for i, glob in enumerate(nodes or []):
        if not glob:
            raise ValidationError(f"nodes[{i}]", "must not be empty")
    service_str = o.opt_str("service")
    service = None
    if protocol == "tcp":
        if service_str is None:
            raise ValidationError("service", "is required for protocol tcp")
        service = parse_service_ref(service_str, DEFAULT_NAMESPACE, "service")
    elif service_str is not None:
        raise ValidationError("service", "is only allowed with protocol tcp (use routes for http)")
    o.done()
    return Listener(
        name=name,
        address=address,
        port=port,
        protocol=protocol,  # type: ignore[arg-type]
        nodes=tuple(nodes or ("*",)),
        service=service,
    )
