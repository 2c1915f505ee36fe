"""Fully asynchronous rollout: generation never stops and finished groups stream into the buffer.

Admission follows AReaL's staleness rule (arXiv 2505.24298): a new group starts only while

    (max_staleness + version + 1) * rollout_batch_size - (accepted + running) > 0,

where `version` is the weight version the engines serve, `accepted` counts groups published (counting
the `version * rollout_batch_size` groups trained before the stream started) and `running` the groups
in flight. So no group can be trained more than `max_staleness` versions after its oldest token.

Weight updates interrupt generation: `pause()` stops new requests and aborts the in-flight ones, whose
partial outputs stay in their group; after `resume(version)` every unfinished sample continues from its
own tokens under the new weights, and its new tokens record the new version in `weight_spans`.
`stop()` ends the stream and recycles every group still in flight to the buffer's partials, so the
buffer's counters invariant holds at every point. Knows nothing about Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from slime_rl.rollout.generate import generate_group
from slime_rl.rollout.manager import RolloutManager, StepState
from slime_rl.types import Group

logger = logging.getLogger(__name__)


def admission_capacity(*, max_staleness: int, version: int, batch_groups: int, accepted: int, running: int) -> int:
    """Groups that may still start under the staleness bound (AReaL's capacity rule); may be negative."""
    return (max_staleness + version + 1) * batch_groups - (accepted + running)


class StreamingRollout:
    """Runs `manager`'s engines continuously. Methods other than `run` are called between steps."""

    def __init__(self, manager: RolloutManager, *, max_staleness: int, version: int) -> None:
        self.manager = manager
        self.cfg = manager.cfg
        self.max_staleness = max_staleness
        self.version = version
        self.accepted = version * self.cfg.rollout_batch_size
        self.stats: Counter[str] = Counter()
        self._tasks: dict[asyncio.Task[Group], Group] = {}
        self._semaphore = asyncio.Semaphore(self.cfg.max_concurrent_requests)
        self._generating = asyncio.Event()  # set while the engines may be sent requests
        self._generating.set()
        self._stop_requests = asyncio.Event()  # set during a pause: queued requests are not sent
        self._wake = asyncio.Event()
        self._requests_out = 0  # group rounds currently inside generate_group
        self._stopping = False
        self._paused_at: float | None = None
        self.engine_idle_s = 0.0  # time the engines spent paused for weight updates

    def capacity(self) -> int:
        return admission_capacity(
            max_staleness=self.max_staleness,
            version=self.version,
            batch_groups=self.cfg.rollout_batch_size,
            accepted=self.accepted,
            running=len(self._tasks),
        )

    async def run(self) -> None:
        """Admit, generate and publish until `stop()`; returns once every group has left the stream."""
        while not self._stopping:
            await self._generating.wait()
            if self._stopping:
                break
            room = min(self.capacity(), self.manager.groups_in_flight_target - len(self._tasks))
            state = StepState(version=self.version)
            for group in self.manager.take(room, state) if room > 0 else []:
                self._tasks[asyncio.create_task(self._run_group(group))] = group
            self.stats.update(state.stats)
            self._wake.clear()
            waiters = {*self._tasks, asyncio.create_task(self._wake.wait())}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in self._tasks:
                    self._settle(self._tasks.pop(task))
                    task.result()
            for task in waiters - done:
                if task not in self._tasks:
                    task.cancel()
        for task, group in list(self._tasks.items()):  # stopped: every group still out goes back to the buffer
            await task
            self._settle(group)
        self._tasks.clear()

    async def _run_group(self, group: Group) -> Group:
        """Generate until the group is finished, pausing across weight updates, then score it."""
        while not group.is_finished and not self._stopping:
            await self._generating.wait()
            if self._stopping:
                break
            self._requests_out += 1
            try:
                await generate_group(
                    self.manager.router,
                    group,
                    self.manager.sampling,
                    self.cfg.max_new_tokens,
                    self.version,
                    self._semaphore,
                    stop=self._stop_requests,
                    seed=self.cfg.seed,
                )
            finally:
                self._requests_out -= 1
        if group.is_finished:
            await self.manager.score_group(group)
        return group

    def _settle(self, group: Group) -> None:
        """A finished group is published (or dropped by the filter); an unfinished one (stop) is recycled."""
        if not group.is_finished:
            self.manager.buffer.put_partials([group])
            self.stats["recycled"] += 1
        elif self.manager.group_filter(group):
            self.manager.buffer.publish([group], self.version)
            self.accepted += 1
            self.stats["published"] += 1
        else:
            self.manager.buffer.record_drops("filter", 1)
            self.stats["dropped_filter"] += 1

    async def pause(self) -> float:
        """Stop sending requests and abort the in-flight ones; returns once none is out (seconds taken)."""
        start = time.perf_counter()
        self._generating.clear()
        self._stop_requests.set()
        while self._requests_out:
            await self.manager.abort_engines()
            await asyncio.sleep(0.01)
        self._paused_at = time.perf_counter()
        return self._paused_at - start

    def resume(self, version: int) -> None:
        """Continue every unfinished sample under weights `version` and admit new groups again."""
        if self._paused_at is not None:
            self.engine_idle_s += time.perf_counter() - self._paused_at
            self._paused_at = None
        self.version = version
        self._stop_requests.clear()
        self._generating.set()
        self._wake.set()

    async def stop(self) -> None:
        """End the stream: abort what is in flight and recycle every unfinished group."""
        await self.pause()
        self._stopping = True
        self._generating.set()
        self._wake.set()
