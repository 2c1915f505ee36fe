"""RolloutManager: fills the buffer with scored groups for one training step.

Flow of one `generate` call: take groups from the buffer (recycled partials first, then fresh prompts),
restart partials that lag more than `max_partial_staleness` versions, generate every sample through the
router, score finished groups and settle each returned group by the one settle policy
(`rollout.settle`: filter, publish, recycle, failure cap), until `rollout_batch_size` groups are published.

APRIL (arXiv 2509.18521): with `use_april`, `over_sampling_batch_size` groups' worth of requests stay in
flight: a new group is taken whenever `n_samples_per_prompt` requests have returned, not when a whole group
has, so groups that wait on their long tail do not leave engine slots idle. Once the target is met, every
engine is aborted and every group still in flight goes back to the buffer's partials, keeping its tokens,
finished members, rewards and versions. A group that finishes after the target is met (it raced the abort)
is recycled too, finished: it is published first next step, under that step's version, after the staleness
cap and the filter.

Every group taken leaves through exactly one of publish, `record_drops` or `put_partials`, so the
buffer's counters invariant holds across aborts and failures. Knows nothing about Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from slime_rl.config.rollout import RolloutConfig, groups_in_flight
from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import SamplingParams
from slime_rl.errors import DataError
from slime_rl.rollout.filters import GroupFilter, keep_all
from slime_rl.rollout.generate import generate_group, restart_stale_group, single_turn
from slime_rl.rollout.hook import Generation
from slime_rl.rollout.multi_turn import reward_text, turn_metrics
from slime_rl.rollout.rewards.hub import RewardFn, score_samples
from slime_rl.rollout.serving import ServingEngines
from slime_rl.rollout.settle import GroupSettler, StepState
from slime_rl.types import Group, Sample, Status

logger = logging.getLogger(__name__)

ABORT_POLL_S = 0.05  # seconds between abort_all rounds while aborted requests are still returning


class RolloutManager:
    """Drives the engines behind one router and fills the buffer, one training step at a time.

    Args:
        buffer: the run's `RedisBuffer` (take_groups, put_partials, publish, record_drops).
        refill_prompts: tops the buffer's prompt list up to at least `n` groups (the dataset cursor).
        decode: token ids -> text, for rewards only (generation is token in, token out).
        generation: the generate hook with its tokenizer and tools (`hook.make_generation`); default single-turn.
    """

    def __init__(
        self,
        cfg: RolloutConfig,
        *,
        router: EngineClient,
        engines: Sequence[EngineClient],  # the engines serving at start; `serving.update` replaces them
        buffer,
        refill_prompts: Callable[[int], None],
        reward_fn: RewardFn,
        decode: Callable[[np.ndarray], str],
        group_filter: GroupFilter = keep_all,
        generation: Generation | None = None,
    ) -> None:
        self.cfg = cfg
        self.router = router
        self.serving = ServingEngines(engines)
        self.buffer = buffer
        self.refill_prompts = refill_prompts
        self.reward_fn = reward_fn
        self.decode = decode
        self.generation = generation or Generation(hook=single_turn)
        self.settler = GroupSettler(cfg, buffer, group_filter)
        self.sampling = SamplingParams(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k
        )
        # Profiling: when a list, `(kind, start_s, end_s)` wall-clock intervals are appended, kind one of `step`,
        # `buffer` (take, settle), `reward`, `abort_wait` (slime_rl/profiling/lifecycles.py reads them).
        self.timeline: list[tuple[str, float, float]] | None = None

    @contextlib.contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        if self.timeline is None:
            yield
            return
        start = time.time()
        try:
            yield
        finally:
            self.timeline.append((kind, start, time.time()))

    @property
    def groups_in_flight_target(self) -> int:
        return groups_in_flight(self.cfg)

    async def generate(self, version: int, num_groups: int | None = None) -> dict[str, float]:
        """Publish `num_groups` (default `rollout_batch_size`) groups generated with weights `version`; return
        rollout metrics. A smaller `num_groups` completes a batch that a dead rollout worker began.

        Raises `ServiceError` (after recycling every group in flight) when more than
        `max_failed_groups_per_step` groups failed on an engine, and `DataError` when the buffer has no
        prompts left and the step cannot be filled.
        """
        start = time.perf_counter()
        target = self.cfg.rollout_batch_size if num_groups is None else num_groups
        state = StepState(version=version)
        # Created per call: asyncio primitives bind to the event loop that first waits on them.
        semaphore = asyncio.Semaphore(self.cfg.max_concurrent_requests)
        stop = asyncio.Event()
        tasks: dict[asyncio.Task[Group], Group] = {}
        with self._timed("step"):
            await self._fill(target, state, semaphore, stop, tasks)
        return rollout_metrics(state, time.perf_counter() - start)

    async def _fill(
        self,
        target: int,
        state: StepState,
        semaphore: asyncio.Semaphore,
        stop: asyncio.Event,
        tasks: dict[asyncio.Task[Group], Group],
    ) -> None:
        version = state.version
        unanswered = 0  # samples of the groups in flight whose request has not returned
        room = asyncio.Event()  # APRIL: a group's worth of requests returned since the last take
        room_opened: asyncio.Future | None = None

        def sample_returned() -> None:
            nonlocal unanswered
            unanswered -= 1
            if self.cfg.use_april and self._num_to_take(state, unanswered, target):
                room.set()

        try:
            while len(state.published) < target:
                with self._timed("buffer"):
                    taken = self.take(
                        self._num_to_take(state, unanswered if self.cfg.use_april else len(tasks), target), state
                    )
                for group in taken:
                    unanswered += sum(not s.status.is_finished for s in group.samples)
                    run = self._run_group(group, version, semaphore, stop, sample_returned)
                    tasks[asyncio.create_task(run)] = group
                if not tasks:
                    if not self.settler.keep_rejected_when_starved(state):
                        raise DataError("the buffer returned no prompt groups; is the dataset empty?")
                    continue
                waits: set[asyncio.Future] = set(tasks)
                if self.cfg.use_april:
                    if room_opened is None or room_opened.done():
                        room.clear()
                        room_opened = asyncio.ensure_future(room.wait())
                    waits.add(room_opened)
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is room_opened:
                        continue
                    target_met = len(state.published) >= target
                    with self._timed("buffer"):
                        self.settler.settle(tasks.pop(task), state, target_met=target_met)
        finally:
            if room_opened is not None:
                room_opened.cancel()
            if tasks:
                with self._timed("abort_wait"):
                    state.abort_wait_s = await self._abort_and_recycle(tasks, stop, state)
            self.settler.close(state)

    def _num_to_take(self, state: StepState, in_flight: int, target: int) -> int:
        """Groups to take now. Without APRIL `in_flight` counts groups, and only as many as the target still needs
        are in flight. With it `in_flight` counts unanswered samples, kept at the over-sampling target's worth."""
        if self.cfg.use_april:
            n = self.cfg.n_samples_per_prompt
            return max(self.groups_in_flight_target * n - in_flight, 0) // n
        return max(target - len(state.published) - in_flight, 0)

    def take(self, num_groups: int, state: StepState) -> list[Group]:
        """Take groups partials-first; restart partials older than `max_partial_staleness` (counted)."""
        if num_groups <= 0:
            return []
        self.refill_prompts(num_groups)
        groups = self.buffer.take_groups(num_groups)
        for group in groups:
            state.stats["partial_resumed"] += any(len(s.response_ids) for s in group.samples)
            if restart_stale_group(group, state.version, self.cfg.max_partial_staleness):
                state.stats["partial_restarted"] += 1
        return groups

    async def _run_group(
        self,
        group: Group,
        version: int,
        semaphore: asyncio.Semaphore,
        stop: asyncio.Event,
        on_sample_returned: Callable[[], None] | None = None,
    ) -> Group:
        """Generate the group's unfinished samples (once each), then score it if it is finished."""
        if not group.is_finished:
            await generate_group(
                self.router,
                group,
                self.sampling,
                self.cfg.max_new_tokens,
                version,
                semaphore,
                stop=stop,
                seed=self.cfg.seed,
                serving=self.serving,
                on_sample_returned=on_sample_returned,
                generation=self.generation,
            )
        if group.is_finished:
            with self._timed("reward"):
                await self.score_group(group)
        return group

    async def score_group(self, group: Group) -> None:
        """Score the finished group's samples that have no reward yet (failed ones keep theirs).

        The reward reads `reward_text`: a multi-turn sample's final answer, not its tool transcript.
        """
        samples = [s for s in group.samples if s.reward is None and s.status is not Status.FAILED]
        if samples:
            await score_samples(self.reward_fn, samples, [reward_text(s, self.decode) for s in samples])

    async def _abort_and_recycle(
        self, tasks: dict[asyncio.Task[Group], Group], stop: asyncio.Event, state: StepState
    ) -> float:
        """Abort every engine, wait for the aborted requests and zero load, recycle every group; returns seconds.

        `abort_all` is repeated until every task returned: a request that was on the wire during one round is
        caught by the next. Tasks still running after `abort_timeout_s` are cancelled; their samples keep the
        tokens they had, since tokens are appended only when a response arrives.
        """
        start = time.perf_counter()
        stop.set()
        pending = set(tasks)
        while pending and time.perf_counter() - start < self.cfg.abort_timeout_s:
            await self.abort_engines()
            _, pending = await asyncio.wait(pending, timeout=ABORT_POLL_S)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning(
                "%d groups did not return within %.0f s of abort_all", len(pending), self.cfg.abort_timeout_s
            )
            await asyncio.wait(pending)
        while await self._engines_busy() and time.perf_counter() - start < self.cfg.abort_timeout_s:
            await asyncio.sleep(ABORT_POLL_S)
        groups = list(tasks.values())
        self.buffer.put_partials(groups)
        state.stats["recycled"] += len(groups)
        state.stats["recycled_finished"] += sum(g.is_finished for g in groups)
        return time.perf_counter() - start

    async def abort_engines(self) -> None:
        engines = list(self.serving.clients)  # the serving set may change while the aborts run
        results = await asyncio.gather(*(engine.abort_all() for engine in engines), return_exceptions=True)
        for engine, result in zip(engines, results, strict=True):
            if isinstance(result, Exception):
                logger.warning("abort_all on %s failed: %s", getattr(engine, "url", engine), result)

    async def _engines_busy(self) -> bool:
        loads = await asyncio.gather(*(e.get_loads() for e in self.serving.clients), return_exceptions=True)
        return any(not isinstance(load, BaseException) and load.num_reqs for load in loads)


SETTLE_COUNTS = (
    "recycled",
    "recycled_finished",
    "partial_resumed",
    "partial_restarted",
    "engine_failed_groups",
    "engine_rejected_samples",
    "reward_failed",
    "dropped_filter",
    "filter_fallback_kept",
)


def rollout_metrics(state: StepState, elapsed_s: float) -> dict[str, float]:
    """Flat `rollout/*` and `perf/*` metrics of one step: published groups, counted events and timings.

    `rollout/off_policy_token_frac`: response tokens generated by weights older than the step's version.
    `perf/longest_sample_tokens_per_s`: the longest published sample's tokens over its request time.
    Tool use (`rollout/tool_use_rate`, ...; zero without multi-turn): see `multi_turn.turn_metrics`.
    """
    samples: list[Sample] = [s for g in state.published for s in g.samples]
    rewards = np.array([s.reward or 0.0 for s in samples], np.float64)
    lengths = np.array([len(s.response_ids) for s in samples], np.float64)
    stale_tokens = sum(end - start for s in samples for v, start, end in s.weight_spans if v < state.version)
    total_tokens = float(lengths.sum())
    longest = max(samples, key=lambda s: len(s.response_ids), default=None)
    longest_time_s = longest.metadata.get("gen_time_s", 0.0) if longest is not None else 0.0
    return {
        "rollout/reward_mean": float(rewards.mean()) if len(rewards) else 0.0,
        "rollout/reward_std": float(rewards.std()) if len(rewards) else 0.0,
        "rollout/response_len_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "rollout/response_len_max": float(lengths.max()) if len(lengths) else 0.0,
        "rollout/truncated_ratio": float(np.mean([s.status is Status.TRUNCATED for s in samples])) if samples else 0.0,
        "rollout/time_s": elapsed_s,
        "rollout/abort_wait_s": state.abort_wait_s,
        "rollout/groups": float(len(state.published)),
        "rollout/samples": float(len(samples)),
        "rollout/response_tokens": total_tokens,
        "rollout/off_policy_token_frac": stale_tokens / max(total_tokens, 1.0),
        **{f"rollout/{key}": float(state.stats[key]) for key in SETTLE_COUNTS},
        **turn_metrics(samples),
        "perf/rollout_samples_per_s": len(samples) / max(elapsed_s, 1e-9),
        "perf/rollout_tokens_per_s": total_tokens / max(elapsed_s, 1e-9),
        "perf/longest_sample_tokens_per_s": len(longest.response_ids) / longest_time_s if longest_time_s else 0.0,
    }
