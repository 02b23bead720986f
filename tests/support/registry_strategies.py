"""Hypothesis strategies for whole registries: services, endpoints, listeners and routes
with every field of the schema, values drawn from the full ranges the model allows, and some
that it refuses. ``registries()`` draws registry content (key -> JSON value)."""

from __future__ import annotations

import base64
import functools
import json
import string
from typing import Any

from hypothesis import strategies as st

from xds_server.model.route import METHODS, RETRY_ON
from xds_server.model.service import ALGORITHMS, MAX_MS, PROTOCOLS

NAMESPACES = ["default", "ns1"]
SERVICES = ["web", "api", "raw"]
LISTENERS = ["public", "edge", "tcp1"]
LABELS = st.dictionaries(
    st.sampled_from(["version", "zone", "tier"]), st.sampled_from(["v1", "v2", "a"]), max_size=2
)
SELECTOR = st.dictionaries(
    st.sampled_from(["version", "zone"]), st.sampled_from(["v1", "v2"]), min_size=1
)
U31 = 2**31 - 1


@functools.cache
def rsa_jwks() -> dict[str, Any]:
    """A JWKS of one real RSA public key (Envoy parses the JWKS it is given)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pub = numbers.public_numbers()

    def b64(i: int) -> str:
        raw = i.to_bytes((i.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {"keys": [{"kty": "RSA", "n": b64(pub.n), "e": b64(pub.e), "kid": "k1"}]}


# Mostly valid (so that routes stay in force), sometimes not (validation sorts it out).
@functools.cache
def tls_secrets() -> dict[str, dict[str, str]]:
    """Registry secrets for listeners' ``tls``, generated once per run: certificates for an
    exact and a wildcard name, one without SANs, one expiring within 7 days (in force with
    a warning), a leaf with its CA's certificate in the chain, and a CA bundle."""
    from tests.support.tls_secrets import issue

    ca = issue("props-ca", is_ca=True, days=365)
    leaf = issue("chain.example", ("chain.example",), ca=ca)
    return {
        "a": json.loads(issue("a.example", ("a.example",)).value()),
        "wild": json.loads(issue("*.b.example", ("*.b.example", "b.example")).value()),
        "nosan": json.loads(issue("nosan").value()),
        "soon": json.loads(issue("soon.example", ("soon.example",), days=3).value()),
        "chain": {"cert": (leaf.cert_pem + ca.cert_pem).decode(), "key": leaf.key_pem.decode()},
        "ca": json.loads(ca.ca_value()),
    }


TLS_SECRET_NAMES = ("a", "wild", "nosan", "soon", "chain", "ca")
_ODD_REFS = ["default/missing", "default/keys", "no-namespace", "Bad/Name"]
# Mostly references that can resolve (a secret drawn, of the right shape), some that cannot.
CERT_REF = st.sampled_from(
    [f"{ns}/{n}" for ns in NAMESPACES for n in TLS_SECRET_NAMES if n != "ca"] * 3
    + [f"{ns}/ca" for ns in NAMESPACES]
    + _ODD_REFS
)
CA_REF = st.sampled_from([f"{ns}/ca" for ns in NAMESPACES] * 3 + ["default/a", *_ODD_REFS])
LISTENER_TLS = st.fixed_dictionaries(
    {"certificates": st.lists(CERT_REF, max_size=3)},
    optional={"client_ca": CA_REF},
)


ORIGIN = st.sampled_from(["*", "https://app.example", "http://a.b:8080"] * 6 + ["app.example"])
HEADER = st.sampled_from(["x-a", "X-Trace", "authorization", "*"] * 6 + ["bad header"])
TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-_.!#$%&'*+^`|~", min_size=1)


def opt(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with any subset of ``fields``."""
    return st.fixed_dictionaries({}, optional=fields)


def ref() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(SERVICES),
        st.builds("{}/{}".format, st.sampled_from(NAMESPACES), st.sampled_from(SERVICES)),
    )


PERCENT = st.integers(0, 100)
STATUS = st.integers(200, 599)
DURATION = st.one_of(st.integers(1, 5000), st.integers(1, MAX_MS))
AFFINITY = st.one_of(
    opt(ttl_ms=st.integers(0, MAX_MS)).map(lambda d: {"cookie": "SESSIONID", **d}),
    st.builds(lambda name: {"cookie": name}, TOKEN),
    st.builds(lambda name: {"header": name}, TOKEN),
    st.just({"source_ip": True}),
)
HASHING = st.sampled_from(["ring_hash", "maglev"])
SERVICE = st.fixed_dictionaries(
    # Mostly valid (so that routes resolve); the optional fields span the model's ranges.
    {"port": st.integers(1, 65535)},
    optional=dict(
        protocol=st.sampled_from([*PROTOCOLS, "http", "http"]),
        connect_timeout_ms=DURATION,
        load_balancer=st.one_of(
            opt(algorithm=st.sampled_from(ALGORITHMS)),
            st.fixed_dictionaries({"algorithm": HASHING, "session_affinity": AFFINITY}),
            opt(algorithm=st.sampled_from(ALGORITHMS), session_affinity=AFFINITY),
        ),
        circuit_breaker=opt(
            max_connections=st.integers(1, U31),
            max_pending_requests=st.integers(1, U31),
            max_requests=st.integers(1, U31),
            max_retries=st.integers(0, U31),
        ),
        outlier_detection=opt(
            consecutive_5xx=st.integers(1, 1000),
            interval_ms=DURATION,
            base_ejection_time_ms=DURATION,
            max_ejection_percent=st.integers(0, 100),
        ),
        health_check=opt(
            path=st.text(max_size=12).map(lambda s: "/" + s),
            interval_ms=DURATION,
            timeout_ms=DURATION,
            healthy_threshold=st.integers(1, 1000),
            unhealthy_threshold=st.integers(1, 1000),
            every_proxy=st.booleans(),
        ),
        subsets=st.fixed_dictionaries(
            {"v1": SELECTOR, "v2": SELECTOR}, optional={"canary": SELECTOR}
        ),
    ),
)
ENDPOINT = st.fixed_dictionaries(
    {"address": st.one_of(st.ip_addresses().map(str), st.just("127.0.0.1"))},
    optional={
        "port": st.integers(1, 65535),
        "weight": st.integers(1, 1000),
        "labels": LABELS,
        "zone": st.text(max_size=8),
        "draining": st.booleans(),
    },
)
LISTENER = st.fixed_dictionaries(
    {"port": st.sampled_from([10000, 10001, 65535])},
    optional={
        "address": st.one_of(st.just("127.0.0.1"), st.ip_addresses().map(str)),
        "protocol": st.sampled_from(["http", "tcp"]),
        "service": ref(),
        "nodes": st.lists(st.sampled_from(["*", "gateway", "side*"]), min_size=1, max_size=2),
    },
)
PATH = st.text(max_size=12).map(lambda s: "/" + s)
REGEX = st.text(alphabet="ab/.*+?()|^$[]\\d{},0-9-", max_size=12)
MATCH = st.one_of(
    st.builds(lambda p: {"prefix": p}, PATH),
    st.builds(lambda p: {"path": p}, PATH),
    st.builds(lambda r: {"regex": r}, REGEX),
).flatmap(
    lambda m: opt(
        headers=st.dictionaries(
            st.sampled_from(["x-canary", ":authority", "content-type", "x-user"]),
            st.text(max_size=8),
            max_size=2,
        ),
        methods=st.lists(st.sampled_from(METHODS), max_size=3),
    ).map(lambda extra: {**m, **extra})
)
DESTINATION = st.fixed_dictionaries(
    {"service": ref()},
    optional={"subset": st.sampled_from(["v1", "v2", "canary"]), "weight": st.integers(0, 10000)},
)
ROUTE = st.fixed_dictionaries(
    {
        "listener": st.sampled_from([*LISTENERS, "*", "e*"]),
        "destinations": st.lists(DESTINATION, min_size=1, max_size=3),
    },
    optional={
        "hosts": st.lists(
            st.sampled_from(
                ["*", "*.example.com", "example.com", "a.b:8080", "web.default", "x.*"]
            ),
            min_size=1,
            max_size=3,
        ),
        "match": MATCH,
        "timeout_ms": st.integers(0, MAX_MS),
        "retries": opt(
            on=st.lists(st.sampled_from(RETRY_ON), min_size=1, max_size=3),
            per_try_timeout_ms=DURATION,
        ).map(lambda d: {"attempts": 3, **d}),
        "priority": st.integers(-(2**31), U31),
        "rate_limit": st.fixed_dictionaries(
            {"requests_per_minute": st.integers(1, 10**9)},
            optional={"burst": st.integers(1, 10**9)},
        ),
        "mirror": st.fixed_dictionaries(
            {"service": ref()},
            optional={"subset": st.sampled_from(["v1", "v2"]), "percent": st.integers(0, 100)},
        ),
        "websocket": st.booleans(),
        "cors": opt(
            allow_origins=st.lists(ORIGIN, min_size=1, max_size=3),
            allow_methods=st.lists(
                st.sampled_from(["GET", "post", "PATCH"] * 6 + ["FETCH"]), max_size=3
            ),
            allow_headers=st.lists(HEADER, max_size=3),
            expose_headers=st.lists(HEADER, max_size=3),
            max_age_s=st.integers(0, 10**7),
            allow_credentials=st.booleans(),
        ),
        "jwt": st.builds(
            lambda iss, aud, claims: {
                "issuer": iss,
                "audiences": aud,
                "jwks": {"inline": rsa_jwks()},
                "forward_claims": claims,
            },
            st.sampled_from(["https://issuer.example", "iss"] * 6 + [""]),
            st.lists(st.sampled_from(["api", "web"] * 6 + [""]), max_size=2),
            st.dictionaries(st.sampled_from(["sub", "email"] * 6 + ["a b"]), HEADER, max_size=2),
        ),
        "api_keys": opt(secret=st.sampled_from(["keys"] * 6 + ["ns1/keys", "x/y/z"])).map(
            lambda d: {"header": "x-api-key", **d}
        ),
        "fault": st.one_of(
            # Mostly coherent halves, sometimes any combination (validation sorts it out).
            st.fixed_dictionaries({"abort_percent": PERCENT, "abort_status": STATUS}),
            st.fixed_dictionaries({"delay_percent": PERCENT, "delay_ms": DURATION}),
            st.fixed_dictionaries(
                {
                    "abort_percent": PERCENT,
                    "abort_status": STATUS,
                    "delay_percent": PERCENT,
                    "delay_ms": DURATION,
                }
            ),
            opt(
                abort_percent=PERCENT,
                abort_status=STATUS,
                delay_percent=PERCENT,
                delay_ms=DURATION,
            ),
        ),
    },
)


IDENTITY = st.one_of(
    st.builds("{}/{}".format, st.sampled_from(NAMESPACES), st.sampled_from([*SERVICES, "*"])),
    st.sampled_from(["gateway:public", "gateway:edge-1", "*", "Bad/x", "web"]),
)
PATH = st.one_of(
    st.sampled_from(["/", "/*", "/api/*", "/health", "/a b", "api", "/x*y"]),
    st.builds("/{}".format, st.text(alphabet=string.ascii_letters + "/-_.~%*", max_size=20)),
)
POLICY = st.fixed_dictionaries(
    # Mostly valid (targets mostly exist); from and to span what the model takes.
    {
        "target": st.sampled_from([*SERVICES, "*", "ghost"]),
        "action": st.sampled_from(["allow", "deny", "allow", "deny", "permit"]),
    },
    optional={
        "from": st.lists(
            st.fixed_dictionaries({"identities": st.lists(IDENTITY, min_size=1, max_size=4)}),
            min_size=1,
            max_size=3,
        ),
        "to": st.lists(
            opt(
                paths=st.lists(PATH, min_size=1, max_size=4),
                methods=st.lists(st.sampled_from([*METHODS, "get"]), min_size=1, max_size=3),
            ),
            min_size=1,
            max_size=3,
        ),
    },
)


def upstreams_for(port: int) -> list[str] | None:
    """A service's ``upstreams``, chosen by its drawn port instead of by a draw of its own:
    more draws would change every example drawn after them (and the derandomized counts
    below with them). Services, whole namespaces, none at all, unregistered names."""
    pick, which = port % 6, port // 6
    if pick == 0:
        return [SERVICES[which % len(SERVICES)]]
    if pick == 1:
        return [f"{NAMESPACES[which % len(NAMESPACES)]}/*"]
    if pick == 2:
        return []
    if pick == 3:
        return ["nope", f"ns1/{SERVICES[which % len(SERVICES)]}", "default/web"]
    return None


@st.composite
def registries(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """Registry content: key -> JSON value, across two namespaces."""
    out: dict[str, dict[str, Any]] = {}
    for ns in NAMESPACES:
        # Most services exist, so that most routes' references resolve.
        for name in [n for n in SERVICES if draw(st.integers(0, 9)) > 1]:
            out[f"/mesh/services/{ns}/{name}"] = service = draw(SERVICE)
            if draw(st.integers(0, 2)) == 0:
                # A sidecar inbound listener (where policies are compiled): its own port, as
                # the static bootstrap holds every listener of the registry in one Envoy.
                port = 15000 + len(out)
                service["sidecar"] = {"inbound_port": port, "app_port": 8080}
                service["mtls"] = draw(st.sampled_from(["strict", "permissive", "off"]))
            for i in range(draw(st.integers(0, 3))):
                out[f"/mesh/endpoints/{ns}/{name}/e{i}"] = draw(ENDPOINT)
        for i in range(draw(st.integers(0, 4))):
            out[f"/mesh/routes/{ns}/r{i}"] = draw(ROUTE)
        for i in range(draw(st.integers(0, 3))):
            out[f"/mesh/policies/{ns}/p{i}"] = draw(POLICY)
    for name in draw(st.lists(st.sampled_from(LISTENERS), unique=True, min_size=1)):
        out[f"/mesh/listeners/{name}"] = draw(LISTENER)
    for ns in NAMESPACES:  # (API keys of routes' api_keys; drawn late, as below)
        if draw(st.integers(0, 3)):
            out[f"/mesh/secrets/{ns}/keys"] = {"keys": {"alice": f"key-{ns}-a", "bob": "k b"}}
    for ns in NAMESPACES:  # (drawn last: what is drawn before stays as it was)
        if draw(st.booleans()):  # the namespace's mTLS default (services may override it)
            out[f"/mesh/namespaces/{ns}"] = draw(
                opt(
                    mtls=st.sampled_from(["strict", "permissive", "off"]),
                    default_policy=st.sampled_from(["allow", "deny"]),
                )
            )
    # TLS (drawn after everything else, so the draws above stay as they were): secrets in
    # each namespace, a gateway listener of its own port with ``tls``, sometimes ``tls``
    # on the other listeners too.
    for ns in NAMESPACES:
        for name in [n for n in TLS_SECRET_NAMES if draw(st.integers(0, 9)) > 1]:
            out[f"/mesh/secrets/{ns}/{name}"] = tls_secrets()[name]
    if draw(st.integers(0, 4)):
        out["/mesh/listeners/secure"] = {"port": 10443, "nodes": ["gateway"]}
    for key, listener in out.items():
        if key.startswith("/mesh/listeners/") and draw(st.booleans()):
            listener["tls"] = draw(LISTENER_TLS)
    # What services' sidecars call (forms the model refuses are unit-tested: one here would
    # reject the service and the routes to it).
    for key, value in out.items():
        if key.startswith("/mesh/services/"):
            upstreams = upstreams_for(value["port"])
            if upstreams is not None:
                value["upstreams"] = upstreams
    return out
