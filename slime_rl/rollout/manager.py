"""RolloutManager: fills the buffer with scored groups for one training step.

Flow of one `generate` call: take groups from the buffer (recycled partials first, then fresh prompts),
generate every sample through the router, score finished groups, apply the dynamic-sampling filter,
publish kept groups to the buffer's stream with the weight version, until `rollout_batch_size` groups
are published. With APRIL on, `over_sampling_batch_size` groups stay in flight; once the target is met,
every engine is aborted and the groups still in flight go back to the buffer as partials, keeping their
tokens, finished members and versions (APRIL, arXiv 2509.18521). A group whose engine failed is
recycled the same way. Knows nothing about Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from slime_rl.config.rollout import RolloutConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import SamplingParams
from slime_rl.rollout.filters import GroupFilter, keep_all
from slime_rl.rollout.generate import generate_group
from slime_rl.rollout.rewards.hub import RewardFn, score_samples
from slime_rl.types import Group, Sample, Status

logger = logging.getLogger(__name__)


class RolloutManager:
    """Drives the engines behind one router and fills the buffer, one training step at a time.

    Args:
        buffer: the run's `RedisBuffer` (take_groups, put_partials, publish, record_drops).
        refill_prompts: tops the buffer's prompt list up to at least `n` groups (the dataset cursor).
        decode: token ids -> text, for rewards only (generation is token in, token out).
    """

    def __init__(
        self,
        cfg: RolloutConfig,
        *,
        router: EngineClient,
        engines: Sequence[EngineClient],
        buffer,
        refill_prompts: Callable[[int], None],
        reward_fn: RewardFn,
        decode: Callable[[np.ndarray], str],
        group_filter: GroupFilter = keep_all,
    ) -> None:
        self.cfg = cfg
        self.router = router
        self.engines = list(engines)
        self.buffer = buffer
        self.refill_prompts = refill_prompts
        self.reward_fn = reward_fn
        self.decode = decode
        self.group_filter = group_filter
        self.sampling = SamplingParams(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k
        )
        self._semaphore = asyncio.Semaphore(cfg.max_concurrent_requests)

    @property
    def groups_in_flight_target(self) -> int:
        if not self.cfg.use_april:
            return self.cfg.rollout_batch_size
        return self.cfg.over_sampling_batch_size or 2 * self.cfg.rollout_batch_size

    def _take(self, num_groups: int) -> list[Group]:
        self.refill_prompts(num_groups)
        return self.buffer.take_groups(num_groups)

    async def generate(self, version: int) -> dict[str, float]:
        """Publish `rollout_batch_size` groups generated with weights `version`; return rollout metrics."""
        start = time.perf_counter()
        target = self.cfg.rollout_batch_size
        published: list[Group] = []
        tasks: set[asyncio.Task[Group]] = set()
        stats = {"recycled": 0, "dropped_filter": 0, "reward_failed": 0}
        while len(published) < target:
            # Without APRIL only as many groups as still needed are in flight; with it, the over-sampling target.
            wanted = self.groups_in_flight_target - len(tasks)
            if not self.cfg.use_april:
                wanted = target - len(published) - len(tasks)
            for group in self._take(max(wanted, 0)):
                tasks.add(asyncio.create_task(self._run_group(group, version)))
            if not tasks:
                raise RuntimeError("the buffer returned no prompt groups; is the dataset empty?")
            done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                group = task.result()
                if not group.is_finished:  # an engine failed mid-group: keep its tokens, retry next time
                    self.buffer.put_partials([group])
                    stats["recycled"] += 1
                elif len(published) >= target:
                    self.buffer.put_partials([group])  # finished beyond the target: first in line next step
                    stats["recycled"] += 1
                elif self.group_filter(group):
                    self.buffer.publish([group], version)
                    published.append(group)
                else:
                    self.buffer.record_drops("filter", 1)
                    stats["dropped_filter"] += 1
                stats["reward_failed"] += sum(s.metadata.get("error", "").startswith("reward") for s in group.samples)
        abort_wait_s = 0.0
        if tasks:
            abort_wait_s, leftovers = await self._abort_in_flight(tasks)
            self.buffer.put_partials(leftovers)
            stats["recycled"] += len(leftovers)
        elapsed = time.perf_counter() - start
        return rollout_metrics(published, version, elapsed, abort_wait_s, stats)

    async def _run_group(self, group: Group, version: int) -> Group:
        if not group.is_finished:
            await generate_group(self.router, group, self.sampling, self.cfg.max_new_tokens, version, self._semaphore)
        if group.is_finished and any(s.reward is None for s in group.samples):
            samples = [s for s in group.samples if s.reward is None and s.status is not Status.FAILED]
            await score_samples(self.reward_fn, samples, [self.decode(s.response_ids) for s in samples])
        return group

    async def _abort_in_flight(self, tasks: set[asyncio.Task[Group]]) -> tuple[float, list[Group]]:
        """Abort every engine, wait until all report zero requests, and return the in-flight groups."""
        start = time.perf_counter()
        await asyncio.gather(*(engine.abort_all() for engine in self.engines))
        groups = list(await asyncio.gather(*tasks))
        while any(load.num_reqs for load in await asyncio.gather(*(e.get_loads() for e in self.engines))):
            await asyncio.sleep(0.01)
        return time.perf_counter() - start, groups


def rollout_metrics(
    groups: Sequence[Group], version: int, elapsed_s: float, abort_wait_s: float, stats: dict[str, int]
) -> dict[str, float]:
    """Flat `rollout/*` metrics of the groups published in one step."""
    samples: list[Sample] = [s for g in groups for s in g.samples]
    rewards = np.array([s.reward or 0.0 for s in samples], np.float64)
    lengths = np.array([len(s.response_ids) for s in samples], np.float64)
    stale_tokens = sum(end - start for s in samples for v, start, end in s.weight_spans if v != version)
    total_tokens = max(lengths.sum(), 1.0)
    return {
        "rollout/reward_mean": float(rewards.mean()) if len(rewards) else 0.0,
        "rollout/reward_std": float(rewards.std()) if len(rewards) else 0.0,
        "rollout/response_len_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "rollout/response_len_max": float(lengths.max()) if len(lengths) else 0.0,
        "rollout/truncated_ratio": float(np.mean([s.status is Status.TRUNCATED for s in samples])) if samples else 0.0,
        "rollout/time_s": elapsed_s,
        "rollout/abort_wait_s": abort_wait_s,
        "rollout/groups": float(len(groups)),
        "rollout/off_policy_token_frac": stale_tokens / total_tokens,
        "perf/rollout_tokens_per_s": float(lengths.sum()) / max(elapsed_s, 1e-9),
        **{f"rollout/{key}": float(value) for key, value in stats.items()},
    }
