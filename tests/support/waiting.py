"""Timing in tests: poll a condition until it holds or a deadline passes, never a fixed sleep and then an assert.

`wait_until` for "this becomes true"; `holds_for` for "this stays true" (a stream that must not grow after Stop):
the window is the claim itself, and the first change fails at once. `detail` adds what a failure should show
(a log tail, the last answer seen); it is called only on failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _message(what: str, timeout: float, detail: Callable[[], str] | None) -> str:
    return f"{what}: not within {timeout} s" + (f"\n{detail()}" if detail else "")


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05,
               detail: Callable[[], str] | None = None) -> float:
    """Poll `condition()` until it is true; -> the seconds it took. Raises AssertionError naming `what`."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise AssertionError(_message(what, timeout, detail))
        time.sleep(interval)


async def wait_until_async(condition: Callable[[], object | Awaitable[object]], timeout: float, what: str,
                           interval: float = 0.01, detail: Callable[[], str] | None = None) -> float:
    """`wait_until` inside an event loop; `condition` may be a plain or an async function."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise AssertionError(_message(what, timeout, detail))
        await asyncio.sleep(interval)


def settled(read: Callable[[], T], quiet_s: float, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `read()` until its value has not changed for `quiet_s`; -> that value (an update already on its way
    when a stream was stopped may still land)."""
    deadline = time.monotonic() + timeout
    value, since, before = read(), time.monotonic(), None
    while time.monotonic() - since < quiet_s:
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: still changing after {timeout} s; the last two values end in "
                                 f"{str(before)[-200:]!r} and {str(value)[-200:]!r}")
        time.sleep(interval)
        if (now := read()) != value:
            before, value, since = value, now, time.monotonic()
    return value


def holds_for(condition: Callable[[], bool], seconds: float, what: str, interval: float = 0.05,
              detail: Callable[[], str] | None = None) -> None:
    """`condition()` stays true for `seconds`; fails at the first poll where it does not."""
    end = time.monotonic() + seconds
    while True:
        if not condition():
            raise AssertionError(f"{what}: stopped holding" + (f"\n{detail()}" if detail else ""))
        if time.monotonic() >= end:
            return
        time.sleep(interval)


async def holds_for_async(condition: Callable[[], bool], seconds: float, what: str, interval: float = 0.01) -> None:
    """`holds_for` inside an event loop."""
    end = time.monotonic() + seconds
    while True:
        if not condition():
            raise AssertionError(f"{what}: stopped holding")
        if time.monotonic() >= end:
            return
        await asyncio.sleep(interval)
