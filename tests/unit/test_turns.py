"""Parses that may be long take turns on the event loop: one at a time, each followed by as
long a rest in which the loop's other work runs; past the queue, a parse runs at once."""

from __future__ import annotations

import asyncio
import time

from xds_server.stream_limits import Turns

PARSE_S = 0.03


def busy_parse(log: list[str], name: str):  # type: ignore[no-untyped-def]
    def parse(data: bytes) -> bytes:
        log.append(f"{name} starts")
        end = time.perf_counter() + PARSE_S
        while time.perf_counter() < end:  # (holds the loop, as a parse in C does)
            pass
        log.append(f"{name} ends")
        return data.upper()

    return parse


async def test_parses_take_turns_and_leave_the_loop_as_long_again() -> None:
    turns = Turns()
    log: list[str] = []

    async def other_work() -> None:  # a change being pushed: short steps, each needing the loop
        for i in range(8):
            log.append(f"work {i}")
            await asyncio.sleep(PARSE_S / 4)

    started = time.perf_counter()
    results = await asyncio.gather(
        turns.run(busy_parse(log, "a"), b"a"),
        turns.run(busy_parse(log, "b"), b"b"),
        turns.run(busy_parse(log, "c"), b"c"),
        other_work(),
    )
    assert results[:3] == [b"A", b"B", b"C"]
    assert time.perf_counter() - started >= 6 * PARSE_S  # three parses, three rests
    parses = [e for e in log if not e.startswith("work")]
    assert parses == ["a starts", "a ends", "b starts", "b ends", "c starts", "c ends"]
    # The other work ran between the parses, not after all of them.
    between = log[log.index("a ends") : log.index("b starts")]
    assert any(e.startswith("work") for e in between), log
    assert turns.waiting == 0


async def test_past_the_queue_a_parse_runs_at_once() -> None:
    turns = Turns(queue=1)
    log: list[str] = []
    first = asyncio.create_task(turns.run(busy_parse(log, "a"), b"a"))
    await asyncio.sleep(0)  # (a is in its turn, or resting)
    assert turns.waiting == 1
    assert await turns.run(busy_parse(log, "b"), b"b") == b"B"  # (no turn: at once)
    assert await first == b"A"
    assert log == ["a starts", "a ends", "b starts", "b ends"]


async def test_burst_turns_wait_without_taking_a_parses_place_in_the_queue() -> None:
    turns = Turns(queue=1)
    log: list[str] = []
    first = asyncio.create_task(turns.run(busy_parse(log, "a"), b"a", bounded=False))
    burst = asyncio.create_task(turns.run(busy_parse(log, "b"), b"b", bounded=False))
    await asyncio.sleep(0)  # (a in its turn or resting, b waiting: neither counts)
    assert turns.waiting == 0
    parse = asyncio.create_task(turns.run(busy_parse(log, "c"), b"c"))
    await asyncio.sleep(0)
    assert turns.waiting == 1  # (c waits its turn: the queue had room)
    assert await asyncio.gather(first, burst, parse) == [b"A", b"B", b"C"]
    assert log == ["a starts", "a ends", "b starts", "b ends", "c starts", "c ends"]
