"""The HTTP core of meshd's metrics port and console, over real sockets on 127.0.0.1:
silent connections hold no task and go at their deadline or for a newer connection,
requests are read across any split, refusals are answered and counted, and a streamed
response ends when its client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from xds_server import http_server
from xds_server.http_server import HttpServer, Request, Response, Streamed, listen_socket


class Site:
    """An HttpServer on a free port, with what its handler saw and what it refused."""

    def __init__(self, **limits: float) -> None:
        self.requests: list[Request] = []
        self.refused: list[str] = []
        self.stream_closed = asyncio.Event()
        self.http = HttpServer(
            self.handle,
            name="test port",
            refused=self.refused.append,
            **limits,  # type: ignore[arg-type]
        )

    async def handle(self, request: Request) -> Response | Streamed:
        self.requests.append(request)
        if request.path == "/stream":
            return Streamed(self.events())
        return Response(200, b"body of " + request.target.encode() + b":" + request.body)

    async def events(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.02)
        finally:
            self.stream_closed.set()

    async def __aenter__(self) -> Site:
        sock = listen_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.listening = await self.http.serve(sock)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.listening.close()
        await self.http.close_connections()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def ask(self, *parts: bytes, pause: float = 0.0) -> bytes:
        """Send ``parts`` (``pause`` s apart); the whole answer, read until it closes."""
        reader, writer = await self.connect()
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer


async def until(check: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def test_a_request_split_across_reads_is_answered_with_its_body() -> None:
    async with Site(max_body=100) as site:
        answer = await site.ask(
            b"POST /x?a=1 HTTP/1.1\r\nHo",
            b"st: h\r\nContent-Length: 5\r\n\r\nab",
            b"cde",
            pause=0.05,
        )
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"body of /x?a=1:abcde")
        (request,) = site.requests
        assert request.method == "POST" and request.headers["host"] == "h"
        assert request.query == {"a": ["1"]} and request.peer.startswith("127.0.0.1:")
        head = await site.ask(b"HEAD / HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        assert b"Content-Length: 10" in head  # (the length of the body not sent)


async def test_silent_connections_hold_no_task_and_go_at_their_deadline() -> None:
    async with Site(header_timeout=0.3, max_connections=100) as site:
        tasks = len(asyncio.all_tasks())
        held = [await site.connect() for _ in range(50)]
        for _, writer in held[:25]:  # half a request from half of them
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        await until(lambda: site.http.open_connections == 50)
        assert len(asyncio.all_tasks()) == tasks  # only objects, no task per connection
        for reader, _ in held:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert site.http.open_connections == 0
        assert site.refused == ["timeout"] * 50 and not site.requests
        for _, writer in held:
            writer.close()


async def test_over_the_limit_the_oldest_silent_connection_makes_room() -> None:
    async with Site(max_connections=4) as site:
        held = [await site.connect() for _ in range(4)]
        await until(lambda: site.http.open_connections == 4)
        answer = await site.ask(b"GET /late HTTP/1.1\r\n\r\n")  # a scraper still gets in
        assert answer.endswith(b"body of /late:")
        assert await asyncio.wait_for(held[0][0].read(), 5) == b""  # the oldest went
        assert site.refused == ["connections"]
        assert site.http.open_connections == 3
        for _, writer in held:
            writer.close()


async def test_bad_requests_are_answered_counted_and_closed() -> None:
    async with Site(max_body=10) as site:
        assert (await site.ask(b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await site.ask(b"GET / HTTP/1.1\r\nX: " + b"y" * 20_000)).startswith(
            b"HTTP/1.1 431"
        )
        big = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n"
        assert (await site.ask(big)).startswith(b"HTTP/1.1 413")
        chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert (await site.ask(chunked)).startswith(b"HTTP/1.1 400")
        assert site.refused == ["bad_request"] * 3 and not site.requests
        assert site.http.open_connections == 0


async def test_a_stream_ends_when_its_client_goes_away() -> None:
    async with Site() as site:
        reader, writer = await site.connect()
        writer.write(b"GET /stream HTTP/1.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"text/event-stream" in head and b"Content-Length" not in head
        assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) == b"data: tick\n\n"
        writer.close()
        await asyncio.wait_for(site.stream_closed.wait(), 5)
        await until(lambda: site.http.open_connections == 0)


async def test_closing_ends_open_streams_and_silent_connections() -> None:
    site = Site()
    async with site:
        reader, writer = await site.connect()
        writer.write(b"GET /stream HTTP/1.1\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        _, silent = await site.connect()
        await until(lambda: site.http.open_connections == 2)
    assert site.stream_closed.is_set() and site.http.open_connections == 0
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(reader.read(), 5)
    writer.close()
    silent.close()


async def test_a_flood_of_connections_is_taken_a_batch_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Full, the server makes room for a new connection by closing the oldest silent one;
    in a flood it takes a batch, then pauses, so the flood's cost to the thread is spread
    out instead of taken all at once. After the pause it takes the next batch."""
    monkeypatch.setattr(http_server, "_FULL_PAUSE_S", 0.5)
    flood: list[socket.socket] = []
    async with Site(max_connections=4) as site:
        try:
            for _ in range(100):  # (within the listen backlog: all are connected at once)
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(("127.0.0.1", site.port))
                flood.append(s)
            await until(lambda: site.refused)
            await asyncio.sleep(0.2)  # (within the pause: nothing more is taken)
            first = len(site.refused)
            assert first <= http_server._ACCEPT_BATCH - 4, first
            # Paused, not stopped: the rest are taken in later batches.
            await until(lambda: len(site.refused) >= 96, timeout=10)
            assert site.http.open_connections <= 4
        finally:
            for s in flood:
                s.close()
