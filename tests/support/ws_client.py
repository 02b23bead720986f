"""A real WebSocket client's view of a proxy (PyPI ``websockets``)."""

from __future__ import annotations

import websockets


async def upgrades(url: str, headers: dict[str, str] | None = None) -> bool:
    """Whether a WebSocket handshake to ``url`` (with ``headers``) completes."""
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=5):
            return True
    except (OSError, websockets.InvalidStatus, websockets.InvalidHandshake):
        return False
