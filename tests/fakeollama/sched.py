"""Per-model runner state: parallel slots, shared model loads, and the hold gate.

Like OLLAMA_NUM_PARALLEL, a model serves at most `num_parallel` inference requests at once;
the rest wait in arrival order, writing nothing. Requests that find their model loading wait
for that one load instead of paying for another, and a load aborted by its client disconnecting
leaves the model unloaded (sched.go expires a runner whose load failed).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .catalog import Model, ModelName
from .keys import SLOT

if TYPE_CHECKING:
    from .app import FakeOllama


def running_ready(
    snapshot: dict[str, Any], running: int, queued: int, idle: bool
) -> dict[str, Any] | None:
    """The snapshot if it meets a wait_for_running condition, else None."""
    if idle:
        busy = any(m["running"] or m["queued"] or m["loading"] for m in snapshot["models"].values())
        return None if busy else snapshot
    if snapshot["running"] >= running and snapshot["queued"] >= queued:
        return snapshot
    return None


@dataclass(slots=True)
class _Lane:
    name: str  # the model as /api/ps names it
    running: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)
    loading: asyncio.Future[None] | None = None

    @property
    def queued(self) -> int:
        return sum(not fut.done() for fut in self.waiting)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting and self.loading is None


class Scheduler:
    def __init__(self, fake: FakeOllama) -> None:
        self._fake = fake
        self._lanes: dict[str, _Lane] = {}
        self._loads: Counter[str] = Counter()  # loads started per model key, for tests
        self._names: dict[str, str] = {}
        self._wake: asyncio.Future[None] | None = None  # resolved whenever knobs change

    # -- state for tests --------------------------------------------------------------------------

    def snapshot(self, model: str | None = None) -> dict[str, Any]:
        """Running, queued and loading per model (by /api/ps name), with totals.

        `loads` counts the loads started since the last reset, finished or not.
        """
        keys = set(self._lanes) | set(self._loads)
        if model is not None:
            keys &= {ModelName.parse(model).key}
        models: dict[str, dict[str, Any]] = {}
        for key in sorted(keys):
            lane = self._lanes.get(key)
            models[self._names[key]] = {
                "running": lane.running if lane else 0,
                "queued": lane.queued if lane else 0,
                "loading": bool(lane and lane.loading is not None),
                "loads": self._loads[key],
            }
        return {
            "running": sum(m["running"] for m in models.values()),
            "queued": sum(m["queued"] for m in models.values()),
            "models": models,
        }

    def reset(self) -> None:
        """Forget the load counts; lanes belong to requests still in flight and stay."""
        self._loads.clear()
        self._names = {k: v for k, v in self._names.items() if k in self._lanes}
        self.knobs_changed()

    def knobs_changed(self) -> None:
        """num_parallel may have grown and hold may be off: let waiters look again."""
        for lane in list(self._lanes.values()):
            self._grant(lane)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        self._wake = None
        self._fake.recorder.changed()

    # -- slots --------------------------------------------------------------------------------------

    def _lane(self, model: Model) -> tuple[str, _Lane]:
        key = ModelName.parse(model.name).key
        self._names[key] = model.name
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(model.name)
        return key, lane

    def _tidy(self, key: str) -> None:
        lane = self._lanes.get(key)
        if lane is not None and lane.idle:
            del self._lanes[key]

    def _free(self, lane: _Lane) -> bool:
        limit = self._fake.knobs.num_parallel
        return limit == 0 or lane.running < limit

    def _grant(self, lane: _Lane) -> None:
        while lane.waiting and self._free(lane):
            fut = lane.waiting.popleft()
            if not fut.done():  # a cancelled waiter has left already
                lane.running += 1
                fut.set_result(None)

    async def hold_slot(self, request: web.Request, model: Model) -> None:
        """Wait (FIFO) for a free slot of `model`; the request keeps it until its handler ends."""
        key, lane = self._lane(model)
        if not lane.waiting and self._free(lane):
            lane.running += 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            lane.waiting.append(fut)
            self._fake.recorder.changed()
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # granted as we were cancelled: pass it on
                    self._release(key)
                else:
                    if fut in lane.waiting:  # else _grant has dropped it already
                        lane.waiting.remove(fut)
                    self._tidy(key)
                    self._fake.recorder.changed()
                raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(key)

        request[SLOT] = release
        self._fake.recorder.changed()

    def _release(self, key: str) -> None:
        lane = self._lanes[key]
        lane.running -= 1
        self._grant(lane)
        self._tidy(key)
        self._fake.recorder.changed()

    # -- loads and the hold gate ---------------------------------------------------------------

    async def load(self, model: Model, keep_alive: float) -> None:
        """Pay load_delay unless the model is loaded; join a load already under way."""
        while True:
            key, lane = self._lane(model)
            if lane.loading is not None:
                await asyncio.shield(lane.loading)
                continue  # loaded now, or that load was aborted: look again
            if not self._fake.knobs.load_delay or self._fake.catalog.is_loaded(
                model, time.time_ns()
            ):
                self._tidy(key)
                return
            break
        lane.loading = asyncio.get_running_loop().create_future()
        self._loads[key] += 1
        # Ollama lists a runner in /api/ps from the moment its load starts.
        self._fake.catalog.load(model, keep_alive, time.time_ns())
        self._fake.recorder.changed()
        finished = False
        try:
            await asyncio.sleep(self._fake.knobs.load_delay)
            finished = True
        finally:
            if not finished:
                self._fake.catalog.load(model, 0, time.time_ns())
            lane.loading.set_result(None)
            lane.loading = None
            self._tidy(key)
            self._fake.recorder.changed()

    async def wait_unheld(self) -> None:
        """The `hold` knob: a running request writes nothing until a test turns hold off."""
        while self._fake.knobs.hold:
            if self._wake is None:
                self._wake = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._wake)
