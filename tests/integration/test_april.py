"""APRIL through a real native engine and the real Redis buffer: abort at target, recycle, resume from
tokens, the staleness cap, dynamic-sampling drops, and the counters invariant over many abort points.

The toy model is random, so it stops at EOS with a small per-token probability: response lengths are
long-tailed, and every step aborts some groups mid-generation.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from slime_rl.buffer.codec import decode_group
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config.rollout import RolloutConfig
from slime_rl.engines.client import EngineClient
from slime_rl.rollout.filters import nonzero_std
from slime_rl.rollout.manager import RolloutManager
from slime_rl.types import Group, Sample, Status
from tests.integration.conftest import toy_engine

MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory):
    with toy_engine(tmp_path_factory, max_running_requests=16, max_context_len=256) as url:
        yield url


def _refill(buffer: RedisBuffer, group_size: int, seed: int = 0):
    rng = random.Random(seed)

    def refill(num_groups: int) -> None:
        missing = num_groups - buffer.queue_lengths()["prompts"]
        groups = []
        for _ in range(max(missing, 0)):
            gid = uuid.uuid4().hex[:12]
            prompt = [1] + [rng.randrange(4, 60) for _ in range(8)]
            samples = [Sample(uid=f"{gid}-{i}", group_id=gid, index=i, prompt_ids=prompt) for i in range(group_size)]
            groups.append(Group(group_id=gid, samples=samples))
        buffer.put_prompts(groups)

    return refill


async def _varied_reward(samples, responses) -> list[float]:
    return [float(len(s.response_ids) % 2) for s in samples]


async def _zero_reward(samples, responses) -> list[float]:
    return [0.0 for _ in samples]


def _generate(url: str, buffer: RedisBuffer, version: int, *, reward_fn=_varied_reward, group_filter=None, **cfg):
    """One `generate(version)` with the engine reporting `version`; returns the metrics."""
    settings = {"rollout_batch_size": 2, "n_samples_per_prompt": 4, "max_new_tokens": MAX_NEW_TOKENS} | cfg
    rollout = RolloutConfig(**settings)

    async def go() -> dict[str, float]:
        async with EngineClient(url) as client:
            await client.update_weight_version(str(version))
            manager = RolloutManager(
                rollout,
                router=client,
                engines=[client],
                buffer=buffer,
                refill_prompts=_refill(buffer, rollout.n_samples_per_prompt, seed=version),
                reward_fn=reward_fn,
                decode=lambda ids: "",
                **({"group_filter": group_filter} if group_filter else {}),
            )
            metrics = await manager.generate(version)
            assert (await client.get_loads()).num_reqs == 0
            return metrics

    return asyncio.run(go())


def _partials(buffer: RedisBuffer) -> list[Group]:
    return [decode_group(raw) for raw in buffer.client.lrange(buffer.keys.partials, 0, -1)]


def _published(buffer: RedisBuffer) -> list[tuple[int, Group]]:
    entries = buffer.client.xrange(buffer.keys.samples)
    groups = buffer.fetch_groups([entry_id.decode() for entry_id, _ in entries])
    return [(int(fields[b"version"]), group) for (_, fields), group in zip(entries, groups, strict=True)]


def test_april_resumed_samples_continue_from_their_tokens_under_the_new_version(engine_url, buffer):
    metrics = _generate(engine_url, buffer, 0, use_april=True, over_sampling_batch_size=6)
    assert metrics["rollout/groups"] == 2 and metrics["rollout/recycled"] == len(_partials(buffer)) >= 4
    before = {s.uid: s for g in _partials(buffer) for s in g.samples}
    resumable = [s for s in before.values() if s.status is Status.ABORTED and len(s.response_ids)]
    assert resumable, "the abort should catch some samples mid-generation"

    _generate(engine_url, buffer, 1, use_april=True, over_sampling_batch_size=6)
    after = {s.uid: s for _, g in _published(buffer) for s in g.samples} | {
        s.uid: s for g in _partials(buffer) for s in g.samples
    }
    for old in before.values():
        new = after[old.uid]
        k = len(old.response_ids)
        assert new.response_ids[:k].tolist() == old.response_ids.tolist()  # no re-tokenisation, no regeneration
        assert new.rollout_logprobs[:k].tolist() == old.rollout_logprobs.tolist()
        assert len(new.response_ids) <= MAX_NEW_TOKENS  # the budget shrank by what was already generated
        if old.status.is_finished:  # finished members are kept as they were
            assert new.response_ids.tolist() == old.response_ids.tolist() and new.weight_spans == old.weight_spans
        elif len(new.response_ids) > k:
            assert new.weight_spans == [*old.weight_spans, (1, k, len(new.response_ids))]
        if new.status is Status.TRUNCATED:
            assert len(new.response_ids) == MAX_NEW_TOKENS
    snapshot = buffer.snapshot()
    assert snapshot["unaccounted"] == 0 and snapshot["in_flight"] == 0


def test_april_staleness_cap_restarts_old_partials_from_their_prompt(engine_url, buffer):
    _generate(engine_url, buffer, 0, use_april=True, over_sampling_batch_size=6)
    with_tokens = sum(any(len(s.response_ids) for s in g.samples) for g in _partials(buffer))
    metrics = _generate(engine_url, buffer, 3, use_april=True, over_sampling_batch_size=6, max_partial_staleness=1)
    assert metrics["rollout/partial_restarted"] == with_tokens > 0  # each lags 3 > 1 versions
    assert metrics["rollout/off_policy_token_frac"] == 0.0
    for version, group in _published(buffer)[2:]:
        assert version == 3 and all(v == 3 for s in group.samples for v, _, _ in s.weight_spans)
    assert buffer.snapshot()["unaccounted"] == 0


def test_april_dynamic_filter_drops_and_counts_then_keeps_when_over_budget(engine_url, buffer):
    metrics = _generate(
        engine_url, buffer, 0, reward_fn=_zero_reward, group_filter=nonzero_std, max_filter_drops_per_step=2
    )
    assert metrics["rollout/dropped_filter"] == 2 and metrics["rollout/filter_fallback_kept"] == 2
    snapshot = buffer.snapshot()
    assert snapshot["dropped_filter"] == 2 and snapshot["completed"] == 2 and snapshot["unaccounted"] == 0


def test_april_counters_invariant_holds_over_randomised_abort_points(engine_url, buffer):
    rng = random.Random(7)
    seen: set[str] = set()
    for version in range(6):
        target = rng.randint(1, 3)
        metrics = _generate(
            engine_url,
            buffer,
            version,
            rollout_batch_size=target,
            use_april=True,
            over_sampling_batch_size=target + rng.randint(0, 4),
            max_new_tokens=rng.choice([8, 24, 48]),
            max_concurrent_requests=rng.choice([4, 64]),
            max_partial_staleness=rng.choice([None, 1]),
        )
        assert metrics["rollout/groups"] == target
        batch = buffer.read_batch("trainer-0", target, block_ms=0, trainer_version=version)
        ids = [g.group_id for g in batch.summaries]
        assert len(ids) == target and not seen & set(ids)  # never trained twice
        seen |= set(ids)
        buffer.ack(batch)
        snapshot = buffer.snapshot()
        assert snapshot["unaccounted"] == 0 and snapshot["in_flight"] == 0 and snapshot["samples"] == 0
