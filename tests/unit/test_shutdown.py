"""What keeps a node's shutdown bounded (the flaky "server did not exit within 15 s of SIGTERM").

A loop that waits for an event with a timeout must end when its task is cancelled, even when
the event is set in the same moment.

Python 3.11's ``asyncio.wait_for`` returns the inner result instead of raising when the
cancellation arrives after the inner wait finished but before the waiting task resumed
(CPython gh-86296, fixed in 3.12): a ``while True`` loop around it then never ends, and the
role's TaskGroup waits for it forever. Each case below sets the event, lets the loop run
``steps`` times, then cancels: every interleaving must end in CancelledError. No sleeps:
``asyncio.sleep(0)`` only hands the loop one turn, and the final wait is a safety net that a
correct loop never reaches.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import structlog

from ollana.config import Config
from ollana.discovery.mdns_io import MdnsAdvertiser
from ollana.files import open_lock
from ollana.runtime import Runtime
from ollana.service.hardstop import HardStop
from ollana.trust import identity
from ollana.trust.devices import DeviceTrust
from ollana.trust.document import PeerKind
from ollana.trust.store import LOCK_FILE, TrustStore
from ollana.waits import wait_set

STEPS = range(6)  # loop turns between the event and the cancel: covers each point of the race


async def cancel_after(task: asyncio.Task[Any], wake: asyncio.Event, steps: int) -> None:
    for _ in range(3):
        await asyncio.sleep(0)  # the task is now waiting
    wake.set()
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)  # safety net: a bug hangs here, not forever
    assert done, f"the task ignored its cancellation ({steps} turns after the event)"
    assert task.cancelled(), task


class NoLinks:
    interfaces: tuple[Any, ...] = ()  # no zeroconf is opened: the loop only waits for pokes


@pytest.mark.parametrize("steps", STEPS)
async def test_the_mdns_advertiser_stops_when_cancelled_as_it_is_poked(steps: int) -> None:
    rt = cast(Runtime, SimpleNamespace(clock=time.monotonic, config=Config()))
    advertiser = MdnsAdvertiser(NoLinks(), rt, list)
    task = asyncio.create_task(advertiser.run())
    poked = SimpleNamespace(set=advertiser.poke)
    await cancel_after(task, cast(asyncio.Event, poked), steps)


@pytest.mark.parametrize("steps", STEPS)
async def test_the_trust_poll_stops_when_cancelled_as_it_is_woken(tmp_path: Path, steps: int) -> None:
    devices = DeviceTrust.load(tmp_path, "host")
    wake = asyncio.Event()
    task = asyncio.create_task(devices.watch(3600, lambda _changed: None, wake))
    await cancel_after(task, wake, steps)


@pytest.mark.parametrize("steps", STEPS)
async def test_wait_set_passes_on_a_cancellation_that_meets_the_event(steps: int) -> None:
    event = asyncio.Event()

    async def forever() -> None:
        while True:
            await wait_set(event, 3600)
            event.clear()

    await cancel_after(asyncio.create_task(forever()), event, steps)


async def test_wait_set_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    event.set()
    assert await wait_set(event, 3600) is True


# --- a lock wait never blocks the event loop ------------------------------------------------------


def test_the_nodes_own_trust_store_write_skips_a_held_lock_and_retries(tmp_path: Path) -> None:
    """A CLI command holding devices.json's lock must not stop the node's event loop: the node's
    throttled write (a device seen) gives up at once and is made at a later poll."""
    _key, cert = identity.new_key_and_cert("other")
    other = identity.device_id_of_pem(cert)
    node = TrustStore.load(tmp_path, min_write_gap=1.0)
    fd = open_lock(tmp_path / LOCK_FILE)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as `ollana device allow` does while it writes
    try:
        returned = threading.Event()

        def seen() -> None:
            node.record_pending(other, cert, "other", "10.0.0.9", PeerKind.CLIENT, 100.0)
            returned.set()

        worker = threading.Thread(target=seen, daemon=True)
        worker.start()
        assert returned.wait(10), "record_pending waited for the lock"
        assert not node.path.exists() and [p.device_id for p in node.pending()] == [other]
    finally:
        os.close(fd)
    assert node.flush(now=101.5)  # the lock is free: the next poll writes it
    assert [p.device_id for p in TrustStore.load(tmp_path).pending()] == [other]


# --- the hard bound --------------------------------------------------------------------------------


async def test_the_hard_stop_ends_the_process_and_names_what_was_stuck() -> None:
    exited: list[int] = []
    fired = threading.Event()

    def exit_(code: int) -> None:
        exited.append(code)
        fired.set()

    async def stuck_forever() -> None:
        await asyncio.get_running_loop().create_future()

    stuck = asyncio.create_task(stuck_forever(), name="stuck")
    try:
        with structlog.testing.capture_logs() as logs:
            stop = HardStop(0.05, asyncio.get_running_loop(), end=exit_)
            stop.arm()
            stop.arm()  # a second SIGTERM: still one countdown
            assert await asyncio.to_thread(fired.wait, 10)
        assert exited == [1]
        [overdue] = [e for e in logs if e["event"] == "shutdown_overdue"]
        assert any(t.startswith("stuck: ") and "in stuck_forever" in t for t in overdue["tasks"]), overdue["tasks"]
        assert "MainThread" in overdue["threads"] and "ollana-hardstop" not in overdue["threads"]
    finally:
        stuck.cancel()


async def test_a_disarmed_hard_stop_never_fires() -> None:
    exited: list[int] = []
    stop = HardStop(3600, asyncio.get_running_loop(), end=exited.append)
    stop.arm()
    stop.disarm()
    timer = stop._timer
    assert timer is not None
    await asyncio.to_thread(timer.join, 10)  # the countdown thread has ended...
    assert not timer.is_alive() and exited == []  # ...without calling exit
