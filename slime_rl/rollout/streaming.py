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
buffer's counters invariant holds at every point.

Returned groups are settled by the same policy as the per-step manager (`rollout.settle`); a settle
window is one weight version: its filter-drop budget and engine-failure cap reset at each `resume`,
where the groups the filter held are dropped. A round of requests that ends unfinished while no pause
is under way means an engine failed: the group is settled (recycled, counted against the cap) instead
of retried at once. An error in the stream (the failure cap) recycles every group still out and is
raised by the next `pause`, `resume` or `stop` (`raise_if_failed`). Knows nothing about Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from slime_rl.rollout.generate import generate_group
from slime_rl.rollout.manager import RolloutManager
from slime_rl.rollout.settle import StepState
from slime_rl.types import Group

logger = logging.getLogger(__name__)


def admission_capacity(*, max_staleness: int, version: int, batch_groups: int, accepted: int, running: int) -> int:
    """Groups that may still start under the staleness bound (AReaL's capacity rule); may be negative."""
    return (max_staleness + version + 1) * batch_groups - (accepted + running)


class StreamingRollout:
    """Runs `manager`'s engines continuously. Methods other than `run` are called between steps."""

    def __init__(self, manager: RolloutManager, *, max_staleness: int, version: int, num_buffered: int = 0) -> None:
        """`num_buffered`: published groups already waiting in the buffer's stream (a resumed run's)."""
        self.manager = manager
        self.cfg = manager.cfg
        self.max_staleness = max_staleness
        self.version = version
        # AReaL's `accepted` counts every group published so far: the trained ones and those waiting.
        self._accepted_before = version * self.cfg.rollout_batch_size + num_buffered  # before this window
        self.stats: Counter[str] = Counter()
        self.window = StepState(version=version)  # the settle window of the current weight version
        self.error: BaseException | None = None
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

    @property
    def accepted(self) -> int:
        """Groups published so far (AReaL's `accepted`), counting those before the stream started."""
        return self._accepted_before + len(self.window.published)

    def capacity(self) -> int:
        return admission_capacity(
            max_staleness=self.max_staleness,
            version=self.version,
            batch_groups=self.cfg.rollout_batch_size,
            accepted=self.accepted,
            running=len(self._tasks),
        )

    async def run(self) -> None:
        """Admit, generate and publish until `stop()`; returns once every group has left the stream.

        On an error (the engine-failure cap) every group still out is recycled before it is raised.
        """
        try:
            await self._admit_and_settle()
        except BaseException as err:
            self.error = err
            self._stopping = True
            self._stop_requests.set()
            self._generating.set()
            raise
        finally:
            for task, group in list(self._tasks.items()):  # stopped: every group still out leaves the stream
                await asyncio.wait([task])
                if self.error is None and not task.exception():
                    self._settle(group)
                else:
                    self.manager.buffer.put_partials([group])
                    self.stats["recycled"] += 1
            self._tasks.clear()
            self._close_window()

    async def _admit_and_settle(self) -> None:
        while not self._stopping:
            await self._generating.wait()
            if self._stopping:
                break
            room = min(self.capacity(), self.manager.groups_in_flight_target - len(self._tasks))
            taken = self.manager.take(room, self.window) if room > 0 else []
            for group in taken:
                self._tasks[asyncio.create_task(self._run_group(group))] = group
            if not self._tasks and room > 0 and not taken:  # the buffer is out of prompts
                self.manager.settler.keep_rejected_when_starved(self.window)
            self._wake.clear()
            waiters = {*self._tasks, asyncio.create_task(self._wake.wait())}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in self._tasks:
                    task.result()  # a round that raised leaves its group in `_tasks`: `run` recycles it
                    self._settle(self._tasks.pop(task))
            for task in waiters - done:
                if task not in self._tasks:
                    task.cancel()

    async def _run_group(self, group: Group) -> Group:
        """Generate until the group is finished, pausing across weight updates, then score it.

        Returns early, unfinished, when the stream stops or when a round ends unfinished while no pause
        was under way (an engine failed: the settle policy recycles and counts it).
        """
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
                    serving=self.manager.serving,
                    generation=self.manager.generation,
                )
            finally:
                self._requests_out -= 1
            if not group.is_finished and not self._stop_requests.is_set():
                return group
        if group.is_finished:
            await self.manager.score_group(group)
        return group

    def _settle(self, group: Group) -> None:
        """Settle a returned group by the shared policy; a stopped stream's unfinished groups are recycled."""
        if self._stopping and not group.is_finished:
            self.manager.buffer.put_partials([group])
            self.stats["recycled"] += 1
            return
        self.manager.settler.settle(group, self.window)

    def _close_window(self) -> None:
        """Drop what the filter held and fold the window's counts into the stream's totals."""
        self.manager.settler.close(self.window)
        self.stats.update(self.window.stats)
        self.stats["published"] += len(self.window.published)
        self._accepted_before += len(self.window.published)
        self.window = StepState(version=self.version)

    def raise_if_failed(self) -> None:
        """Re-raise the error that ended the stream, if one did."""
        if self.error is not None:
            raise self.error

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
        """Continue every unfinished sample under weights `version` and admit new groups again.

        Closes the settle window of the previous version and opens one for `version`.
        """
        self.raise_if_failed()
        self.version = version
        self._close_window()
        if self._paused_at is not None:
            self.engine_idle_s += time.perf_counter() - self._paused_at
            self._paused_at = None
        self._stop_requests.clear()
        self._generating.set()
        self._wake.set()

    async def stop(self) -> None:
        """End the stream: abort what is in flight and recycle every unfinished group."""
        await self.pause()
        self._stopping = True
        self._generating.set()
        self._wake.set()
