from __future__ import annotations

import asyncio
from pathlib import Path

from ollana.trust.devices import DeviceTrust


async def test_wake_rereads_the_allow_list_at_once(tmp_path: Path) -> None:
    devices = DeviceTrust.load(tmp_path, "host")
    ticks: asyncio.Queue[bool] = asyncio.Queue()
    wake = asyncio.Event()
    task = asyncio.create_task(devices.watch(3600, ticks.put_nowait, wake))  # no poll for an hour...
    try:
        wake.set()  # ...but SIGHUP asks for one now
        assert await asyncio.wait_for(ticks.get(), 5) is False
        assert not wake.is_set()
    finally:
        task.cancel()
