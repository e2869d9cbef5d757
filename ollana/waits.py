"""Waiting for an event with a timeout, without losing a cancellation.

Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives after the awaited
thing finished but before the waiting task resumed (CPython gh-86296, fixed in 3.12): it
returns the result instead. A ``while True`` loop around ``wait_for(event.wait(), t)`` then
goes round again, and the TaskGroup that cancelled it at shutdown waits for it forever.
``asyncio.timeout`` does not create an inner task, so the cancellation always reaches us.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
