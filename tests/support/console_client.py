"""A console visitor over plain HTTP (http.client): cookies kept, redirects not followed,
forms posted as a browser posts them."""

from __future__ import annotations

import asyncio
import html
import http.client
import re
from dataclasses import dataclass, field
from urllib.parse import urlencode


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: str
    """The body as sent."""

    @property
    def body(self) -> str:
        """The body with HTML's character references read (as a person reads it)."""
        return html.unescape(self.raw)

    def csrf(self) -> str:
        """The CSRF token the page's forms carry."""
        found = re.search(r'name="csrf" value="([^"]+)"', self.body)
        assert found, "no CSRF token on the page"
        return found.group(1)


@dataclass
class Visitor:
    port: int
    cookie: str = ""
    history: list[str] = field(default_factory=list)

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            if self.cookie:
                headers = {"Cookie": self.cookie, **headers}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read().decode()
            got = {k.lower(): v for k, v in resp.getheaders()}
            set_cookie = got.get("set-cookie", "")
            if set_cookie:
                self.cookie = set_cookie.split(";", 1)[0]
            self.history.append(f"{method} {path} -> {resp.status}")
            return Reply(resp.status, got, data)
        finally:
            conn.close()

    async def get(self, path: str) -> Reply:
        return await asyncio.to_thread(self._request, "GET", path, None, {})

    async def post(self, path: str, fields: list[tuple[str, str]]) -> Reply:
        body = urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return await asyncio.to_thread(self._request, "POST", path, body, headers)

    async def login(self, token: str) -> Reply:
        return await self.post("/login", [("token", token), ("next", "/")])
