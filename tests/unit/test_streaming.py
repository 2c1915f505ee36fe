"""Fully-async streaming: AReaL's admission rule, and the shared settle policy (filter budget, failure cap)."""

import asyncio

import pytest

from slime_rl.errors import ServiceError
from slime_rl.rollout.streaming import StreamingRollout, admission_capacity
from tests.unit.manager_fakes import FakeEngine, MemoryBuffer, make_manager


def test_admission_capacity_allows_eta_plus_one_batches_ahead_at_version_zero():
    # (eta + version + 1) * batch - (accepted + running) = (1 + 0 + 1) * 4 - 0
    assert admission_capacity(max_staleness=1, version=0, batch_groups=4, accepted=0, running=0) == 8


def test_admission_capacity_counts_running_and_accepted_groups():
    # (2 + 3 + 1) * 4 - (17 + 5) = 24 - 22
    assert admission_capacity(max_staleness=2, version=3, batch_groups=4, accepted=17, running=5) == 2


def test_admission_capacity_is_negative_when_generation_runs_ahead_of_the_trainer():
    # (0 + 1 + 1) * 4 - (8 + 1) = -1
    assert admission_capacity(max_staleness=0, version=1, batch_groups=4, accepted=8, running=1) == -1


# -- the stream settles groups by the same policy as the per-step manager ---------------------------------


def _stream(buffer, engine, **overrides) -> StreamingRollout:
    return StreamingRollout(
        make_manager(buffer, engine, **{"max_new_tokens": 4} | overrides), max_staleness=1, version=0
    )


async def _run_until(stream: StreamingRollout, done, *, timeout_s: float = 5.0) -> None:
    """Run the stream until `done()` holds, then stop it."""
    task = asyncio.create_task(stream.run())
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not done() and asyncio.get_running_loop().time() < deadline and not task.done():
        await asyncio.sleep(0.01)
    await stream.stop()
    await asyncio.wait_for(task, timeout_s)


def test_stream_filter_drops_up_to_its_budget_then_publishes():
    # Every group is rejected by the filter and the budget is 2 drops per weight version: two are held
    # (dropped when the window closes), every later one is published, so the filter cannot starve the trainer.
    gids = [f"g{i}" for i in range(10)]
    buffer, engine = MemoryBuffer(), FakeEngine({f"{g}-{i}": 2 for g in gids for i in range(2)})
    buffer.add_prompts(gids, group_size=2)
    stream = _stream(buffer, engine, group_filter=lambda g: False, max_filter_drops_per_step=2, rollout_batch_size=4)
    asyncio.run(_run_until(stream, lambda: len(buffer.samples) >= 4))
    assert buffer.counters["dropped_filter"] == 2
    assert len(buffer.samples) >= 4
    assert stream.stats["filter_fallback_kept"] == len(buffer.samples)
    assert buffer.counters["in_flight"] == 0 and buffer.unaccounted() == 0


def test_stream_engine_failing_every_request_raises_after_the_cap_and_keeps_the_groups():
    buffer, engine = MemoryBuffer(), FakeEngine({}, fail=True)
    buffer.add_prompts(["g0", "g1"], group_size=2)
    stream = _stream(buffer, engine, max_failed_groups_per_step=3)

    async def run() -> None:
        await asyncio.wait_for(stream.run(), 5.0)

    with pytest.raises(ServiceError, match="max_failed_groups_per_step=3"):
        asyncio.run(run())
    assert stream.stats["engine_failed_groups"] == 4
    assert len(buffer.partials) == 2 and not buffer.samples
    assert buffer.counters["in_flight"] == 0 and buffer.unaccounted() == 0
    with pytest.raises(ServiceError):
        stream.raise_if_failed()


def test_stream_round_that_raises_recycles_its_group_and_keeps_the_invariant():
    class BrokenEngine(FakeEngine):
        async def generate(self, request):
            raise RuntimeError("a bug below the engine client")

    buffer, engine = MemoryBuffer(), BrokenEngine({})
    buffer.add_prompts(["g0"], group_size=2)
    stream = _stream(buffer, engine)
    with pytest.raises(RuntimeError, match="a bug below"):
        asyncio.run(asyncio.wait_for(stream.run(), 5.0))
    assert len(buffer.partials) == 1
    assert buffer.counters["in_flight"] == 0 and buffer.unaccounted() == 0
