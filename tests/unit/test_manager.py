"""RolloutManager scheduling against a fake engine and an in-memory buffer: targets, APRIL abort and resume,
staleness restarts, the filter's drop budget, engine failures, and the counters invariant."""

from __future__ import annotations

import asyncio
import random

import pytest

from slime_rl.buffer.codec import decode_group, encode_group
from slime_rl.errors import ServiceError
from slime_rl.types import Group, Sample, Status
from tests.unit.manager_fakes import PROMPT, FakeEngine, MemoryBuffer, all_zero, make_manager


def _lengths(group_ids: list[str], length: int, group_size: int = 2) -> dict[str, int]:
    return {f"{gid}-{i}": length for gid in group_ids for i in range(group_size)}


def _partial(gid: str, response: list[int], version: int, status: Status) -> Group:
    samples = [
        Sample(
            uid=f"{gid}-{i}", group_id=gid, index=i, prompt_ids=PROMPT, response_ids=response,
            rollout_logprobs=[-1.0] * len(response), loss_mask=[1] * len(response),
            weight_spans=[(version, 0, len(response))] if response else [], status=status, created_version=version,
        )
        for i in range(2)
    ]  # fmt: skip
    return Group(group_id=gid, samples=samples)


def test_manager_without_april_publishes_exactly_the_target():
    buffer, engine = MemoryBuffer(), FakeEngine(_lengths(["g0", "g1", "g2"], 3))
    buffer.add_prompts(["g0", "g1", "g2"], group_size=2)
    metrics = asyncio.run(make_manager(buffer, engine).generate(0))
    assert sorted(g.group_id for _, g in buffer.samples) == ["g0", "g1"]
    assert all(s.response_ids.tolist() == [100, 101, 102] for _, g in buffer.samples for s in g.samples)
    assert len(engine.requests) == 4 and len(buffer.prompts) == 1
    assert metrics["rollout/groups"] == 2 and metrics["rollout/recycled"] == 0
    assert buffer.counters["in_flight"] == 0 and buffer.unaccounted() == 0


def test_manager_april_aborts_at_target_and_recycles_unfinished_groups():
    lengths = _lengths(["g0", "g1"], 2) | {"g2-0": 1}  # g2-0 finishes early, g2-1 and g3 never stop
    buffer, engine = MemoryBuffer(), FakeEngine(lengths)
    buffer.add_prompts(["g0", "g1", "g2", "g3"], group_size=2)
    metrics = asyncio.run(make_manager(buffer, engine, use_april=True, over_sampling_batch_size=4).generate(0))
    assert sorted(g.group_id for _, g in buffer.samples) == ["g0", "g1"]
    assert metrics["rollout/recycled"] == 2 and metrics["rollout/abort_wait_s"] > 0
    assert not engine.live and buffer.counters["in_flight"] == 0 and buffer.unaccounted() == 0
    partials = {g.group_id: g for g in map(decode_group, buffer.partials)}
    assert sorted(partials) == ["g2", "g3"]
    finished = partials["g2"].samples[0]
    assert finished.status is Status.COMPLETED and finished.response_ids.tolist() == [100]
    for sample in [partials["g2"].samples[1], *partials["g3"].samples]:
        assert sample.status is Status.ABORTED and 1 <= len(sample.response_ids) < 1000
        assert sample.weight_spans == [(0, 0, len(sample.response_ids))]


def test_manager_april_resume_continues_from_tokens_with_reduced_budget_and_skips_finished_members():
    lengths = _lengths(["g0", "g1"], 2) | {"g2-0": 1}
    buffer, engine = MemoryBuffer(), FakeEngine(lengths)
    buffer.add_prompts(["g0", "g1", "g2", "g3"], group_size=2)
    manager = make_manager(buffer, engine, use_april=True, over_sampling_batch_size=4)
    asyncio.run(manager.generate(0))
    before = {s.uid: s.response_ids.tolist() for g in map(decode_group, buffer.partials) for s in g.samples}
    buffer.add_prompts(["g4", "g5"], group_size=2)  # never finish: the resumed partials win the next step
    engine.lengths |= {"g2-1": 50, "g3-0": 50, "g3-1": 50}
    engine.weight_version = "1"
    engine.requests.clear()
    metrics = asyncio.run(manager.generate(1))

    resumed = {r.rid: r for r in engine.requests if r.rid in ("g2-1", "g3-0", "g3-1")}
    assert "g2-0" not in {r.rid for r in engine.requests}  # the finished member is not regenerated
    for uid, request in resumed.items():
        assert request.input_ids == PROMPT + before[uid]  # exactly its own tokens, no re-tokenisation
        assert request.sampling_params.max_new_tokens == 1000 - len(before[uid])
    published = {s.uid: s for _, g in buffer.samples[2:] for s in g.samples}
    assert sorted(published) == ["g2-0", "g2-1", "g3-0", "g3-1"]
    assert published["g2-0"].response_ids.tolist() == [100] and published["g2-0"].weight_spans == [(0, 0, 1)]
    for uid in resumed:
        k = len(before[uid])
        assert published[uid].response_ids.tolist() == list(range(100, 150))
        assert published[uid].weight_spans == [(0, 0, k), (1, k, 50)]
    stale = 1 + sum(len(before[uid]) for uid in resumed)  # g2-0's token and every resumed prefix
    assert metrics["rollout/off_policy_token_frac"] == pytest.approx(stale / 151)
    assert metrics["rollout/partial_resumed"] == 2 and metrics["rollout/recycled"] == 2
    assert buffer.unaccounted() == 0


@pytest.mark.parametrize(("cap", "restarted"), [(1, True), (3, False)])
def test_manager_partial_older_than_staleness_cap_restarts_from_prompt(cap, restarted):
    buffer, engine = MemoryBuffer(), FakeEngine(_lengths(["p"], 3), version="3")
    buffer.partials.append(encode_group(_partial("p", [100, 101], version=0, status=Status.ABORTED)))
    buffer.counters["issued"] = 1  # issued at version 0, recycled since
    metrics = asyncio.run(make_manager(buffer, engine, rollout_batch_size=1, max_partial_staleness=cap).generate(3))
    sample = buffer.samples[0][1].samples[0]
    assert sample.response_ids.tolist() == [100, 101, 102]
    if restarted:  # lag 3 > 1: regenerated from the prompt under version 3
        assert engine.requests[0].input_ids == PROMPT and engine.requests[0].sampling_params.max_new_tokens == 1000
        assert sample.weight_spans == [(3, 0, 3)] and sample.created_version == 3
    else:  # lag 3 <= 3: resumed
        assert engine.requests[0].input_ids == PROMPT + [100, 101]
        assert sample.weight_spans == [(0, 0, 2), (3, 2, 3)]
    assert metrics["rollout/partial_restarted"] == float(restarted)
    assert buffer.unaccounted() == 0


def test_manager_finished_recycled_group_is_published_first_without_regeneration():
    buffer, engine = MemoryBuffer(), FakeEngine(_lengths(["g0"], 3), version="1")
    buffer.partials.append(encode_group(_partial("raced", [100], version=0, status=Status.COMPLETED)))
    buffer.counters["issued"] = 1
    buffer.add_prompts(["g0"], group_size=2)
    metrics = asyncio.run(make_manager(buffer, engine, rollout_batch_size=1).generate(1))
    assert [g.group_id for _, g in buffer.samples] == ["raced"] and not engine.requests
    assert [s.reward for s in buffer.samples[0][1].samples] == [1.0, 0.0]  # scored on the way out
    assert metrics["rollout/off_policy_token_frac"] == 1.0


def test_manager_filter_drops_up_to_budget_then_keeps_groups():
    buffer, engine = MemoryBuffer(), FakeEngine(_lengths([f"g{i}" for i in range(5)], 2))
    buffer.add_prompts([f"g{i}" for i in range(5)], group_size=2)
    manager = make_manager(
        buffer, engine, reward_fn=all_zero, group_filter=lambda g: False, max_filter_drops_per_step=1
    )
    metrics = asyncio.run(manager.generate(0))
    # g0 and g1 come back: one is dropped (the budget), one kept; g2 is taken for the last slot and kept.
    assert len(buffer.samples) == 2 and len(buffer.prompts) == 2
    assert metrics["rollout/dropped_filter"] == 1 and metrics["rollout/filter_fallback_kept"] == 2
    assert buffer.counters["dropped_filter"] == 1 and buffer.unaccounted() == 0


def test_manager_filter_keeps_rejected_groups_when_prompts_run_out():
    buffer, engine = MemoryBuffer(), FakeEngine(_lengths(["g0", "g1", "g2"], 2))
    buffer.add_prompts(["g0", "g1", "g2"], group_size=2)
    manager = make_manager(buffer, engine, group_filter=lambda g: False, max_filter_drops_per_step=10)
    metrics = asyncio.run(manager.generate(0))
    # All three are rejected; with nothing left to take, two rejected groups fill the step, one is dropped.
    assert len(buffer.samples) == 2 and metrics["rollout/filter_fallback_kept"] == 2
    assert buffer.counters["dropped_filter"] == 1 and buffer.unaccounted() == 0


def test_manager_engine_failing_every_request_raises_after_the_cap_and_keeps_the_group():
    buffer, engine = MemoryBuffer(), FakeEngine({}, fail=True)
    buffer.add_prompts(["g0", "g1"], group_size=2)
    manager = make_manager(buffer, engine, rollout_batch_size=1, max_failed_groups_per_step=3)
    with pytest.raises(ServiceError, match="max_failed_groups_per_step=3"):
        asyncio.run(manager.generate(0))
    assert buffer.counters["recycled"] == 4 and len(buffer.partials) == 1 and len(buffer.prompts) == 1
    assert buffer.counters["issued"] == 1 and buffer.unaccounted() == 0


def test_manager_abort_stops_requests_still_waiting_for_a_slot():
    lengths = _lengths(["g0"], 1)
    buffer, engine = MemoryBuffer(), FakeEngine(lengths)
    buffer.add_prompts(["g0", "g1"], group_size=2)
    manager = make_manager(buffer, engine, rollout_batch_size=1, use_april=True, max_concurrent_requests=1)
    asyncio.run(manager.generate(0))
    # One request slot: g0-0, g0-1, then g1-0 runs until the abort; g1-1 was still queued and is never sent.
    assert "g1-1" not in {r.rid for r in engine.requests}
    assert buffer.unaccounted() == 0 and len(buffer.partials) == 1


def test_manager_counters_balance_over_randomised_abort_points():
    rng = random.Random(0)
    gids = [f"g{i}" for i in range(60)]
    lengths = {f"{gid}-{i}": rng.choice([1, 2, 3, 5, 8, 40]) for gid in gids for i in range(2)}
    buffer, engine = MemoryBuffer(), FakeEngine(lengths)
    buffer.add_prompts(gids, group_size=2)
    manager = make_manager(buffer, engine, use_april=True, over_sampling_batch_size=5, max_new_tokens=30)
    for version in range(8):
        engine.weight_version = str(version)
        asyncio.run(manager.generate(version))
        assert buffer.unaccounted() == 0 and buffer.counters["in_flight"] == 0
    published = [g.group_id for _, g in buffer.samples]
    assert len(published) == 16 and len(set(published)) == 16  # the target every step, no group twice
    for _, group in buffer.samples:
        for sample in group.samples:
            assert sample.response_ids.tolist() == list(range(100, 100 + len(sample.response_ids)))
            assert len(sample.response_ids) == min(lengths[sample.uid], 30)
