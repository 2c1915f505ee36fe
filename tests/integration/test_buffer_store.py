"""RedisBuffer against a real embedded Redis: ordering, consumer-group re-delivery, staleness, accounting."""

from __future__ import annotations

import random
import time
import uuid

import numpy as np
import pytest

from slime_rl.buffer.store import RedisBuffer
from slime_rl.types import Group, Sample, Status


def make_group(name: str, *, n: int = 2, status: Status = Status.PENDING, version: int = 0) -> Group:
    samples = [
        Sample(uid=f"{name}-{i}", group_id=name, index=i, prompt_ids=np.arange(4), status=status) for i in range(n)
    ]
    group = Group(group_id=name, samples=samples)
    if status.is_finished:
        for sample in group.samples:
            sample.append_tokens(np.array([7, 8]), np.array([-0.5, -0.25]), version)
    return group


def finish(group: Group, version: int) -> Group:
    for sample in group.samples:
        sample.append_tokens(np.array([9]), np.array([-1.0]), version)
        sample.status = Status.COMPLETED
    return group


@pytest.fixture
def buffer(redis_url):
    buf = RedisBuffer.from_url(redis_url, f"test-{uuid.uuid4().hex}", redelivery_idle_ms=50)
    yield buf
    buf.clear()
    buf.client.close()


def ids(groups: list[Group]) -> list[str]:
    return [g.group_id for g in groups]


def test_take_groups_returns_partials_before_prompts_and_counts_only_fresh_as_issued(buffer):
    buffer.put_prompts([make_group("p0"), make_group("p1"), make_group("p2")])
    taken = buffer.take_groups(2)
    buffer.put_partials(taken)  # p0, p1 recycled
    buffer.set_version(3)

    again = buffer.take_groups(3)

    assert ids(again) == ["p0", "p1", "p2"]
    assert buffer.counters()["issued"] == 3
    assert buffer.counters()["recycled"] == 2
    assert buffer.in_flight() == 3
    assert [s.created_version for s in again[2].samples] == [3, 3]  # fresh group stamped at issue
    assert buffer.take_groups(5) == []


def test_take_groups_never_returns_more_than_n(buffer):
    buffer.put_prompts([make_group(f"p{i}") for i in range(5)])
    buffer.put_partials(buffer.take_groups(3))

    assert ids(buffer.take_groups(2)) == ["p0", "p1"]
    assert ids(buffer.take_groups(2)) == ["p2", "p3"]


def test_publish_then_read_and_ack_counts_trained(buffer):
    buffer.put_prompts([make_group("a"), make_group("b")])
    groups = [finish(g, version=0) for g in buffer.take_groups(2)]
    buffer.publish(groups, version=0)

    batch = buffer.read_batch("trainer-0", num_groups=2, block_ms=100, trainer_version=0)
    assert ids(batch.summaries) == ["a", "b"]
    assert batch.versions == [0, 0]
    assert buffer.queue_lengths() == {"prompts": 0, "partials": 0, "samples": 2, "pending": 2}

    assert buffer.ack(batch) == 2
    assert buffer.ack(batch) == 0  # a second ack changes nothing
    assert buffer.counters()["trained"] == 2
    assert buffer.queue_lengths()["samples"] == 0


def test_publish_rejects_unfinished_group(buffer):
    with pytest.raises(ValueError, match="put_partials"):
        buffer.publish([make_group("x")], version=0)


def test_read_batch_returns_what_it_has_when_block_expires(buffer):
    buffer.put_prompts([make_group("a")])
    buffer.publish([finish(g, 0) for g in buffer.take_groups(1)], version=0)

    batch = buffer.read_batch("t", num_groups=4, block_ms=50, trainer_version=0)

    assert ids(batch.summaries) == ["a"]


def test_unacked_groups_are_redelivered_to_a_new_consumer_after_crash(buffer, redis_url):
    buffer.put_prompts([make_group("a"), make_group("b")])
    buffer.publish([finish(g, 0) for g in buffer.take_groups(2)], version=0)
    crashed = buffer.read_batch("trainer-old", num_groups=2, block_ms=100, trainer_version=0)
    assert len(crashed.summaries) == 2  # read, never acknowledged: the process dies here

    successor = RedisBuffer.from_url(redis_url, buffer.run_id, redelivery_idle_ms=50)
    assert successor.read_batch("trainer-new", num_groups=2, block_ms=0, trainer_version=0).summaries == []
    time.sleep(0.08)  # longer than redelivery_idle_ms
    batch = successor.read_batch("trainer-new", num_groups=2, block_ms=0, trainer_version=0)

    assert ids(batch.summaries) == ["a", "b"]
    assert successor.ack(batch) == 2
    assert buffer.ack(crashed) == 0  # the old consumer's late ack does not count twice
    assert buffer.counters()["trained"] == 2
    successor.client.close()


def test_restarted_consumer_with_same_name_gets_its_unacked_groups_at_once(buffer, redis_url):
    buffer.put_prompts([make_group("a")])
    buffer.publish([finish(g, 0) for g in buffer.take_groups(1)], version=0)
    buffer.read_batch("trainer-0", num_groups=1, block_ms=0, trainer_version=0)

    restarted = RedisBuffer.from_url(redis_url, buffer.run_id)  # default idle time: minutes
    batch = restarted.read_batch("trainer-0", num_groups=1, block_ms=0, trainer_version=0)

    assert ids(batch.summaries) == ["a"]
    restarted.client.close()


def test_outstanding_batch_is_not_handed_out_twice_by_the_same_reader(buffer):
    buffer.put_prompts([make_group("a"), make_group("b")])
    buffer.publish([finish(g, 0) for g in buffer.take_groups(2)], version=0)
    first = buffer.read_batch("t", num_groups=1, block_ms=0, trainer_version=0)
    time.sleep(0.08)  # the first batch is idle past redelivery_idle_ms while it trains
    second = buffer.read_batch("t", num_groups=2, block_ms=0, trainer_version=0)

    assert ids(first.summaries) == ["a"]
    assert ids(second.summaries) == ["b"]


def test_read_batch_drops_and_counts_stale_groups(redis_url):
    buffer = RedisBuffer.from_url(redis_url, f"test-{uuid.uuid4().hex}", max_staleness=1)
    buffer.put_prompts([make_group(f"g{i}") for i in range(3)])
    g0, g1, g2 = buffer.take_groups(3)
    buffer.publish([finish(g0, version=1), finish(g1, version=3), finish(g2, version=4)], version=4)

    batch = buffer.read_batch("t", num_groups=3, block_ms=0, trainer_version=4)

    assert ids(batch.summaries) == ["g1", "g2"]  # g0 lags by 3 > 1
    assert batch.num_dropped_stale == 1
    assert buffer.counters()["dropped_stale"] == 1
    assert buffer.queue_lengths()["samples"] == 2  # the stale entry was acknowledged and deleted
    buffer.clear()
    buffer.client.close()


def test_record_drops_rejects_reserved_reason(buffer):
    with pytest.raises(ValueError, match="stale"):
        buffer.record_drops("stale", [make_group("x")])


def test_version_defaults_to_zero_and_round_trips(buffer):
    assert buffer.get_version() == 0
    buffer.set_version(7)
    assert buffer.get_version() == 7


def test_counters_invariant_holds_under_random_operations(buffer):
    rng = random.Random(0)
    trainer = RedisBuffer(buffer.client, buffer.run_id, max_staleness=1, redelivery_idle_ms=10)
    held: list = []  # groups rollout holds
    batches: list = []
    version = 0
    consumer = "t"
    for step in range(300):
        op = rng.choice(["prompts", "take", "partial", "publish", "drop", "read", "ack", "version", "crash"])
        if op == "prompts":
            buffer.put_prompts([make_group(f"s{step}-{i}") for i in range(rng.randint(1, 4))])
        elif op == "take":
            held += buffer.take_groups(rng.randint(1, 5))
        elif op == "partial" and held:
            k = rng.randint(1, len(held))
            buffer.put_partials(held[:k])
            held = held[k:]
        elif op == "publish" and held:
            k = rng.randint(1, len(held))
            buffer.publish([finish(g, rng.randint(max(0, version - 3), version)) for g in held[:k]], version=version)
            held = held[k:]
        elif op == "drop" and held:
            k = rng.randint(1, len(held))
            buffer.record_drops("filter", held[:k])
            held = held[k:]
        elif op == "read":
            batches.append(trainer.read_batch(consumer, rng.randint(1, 4), block_ms=0, trainer_version=version))
        elif op == "ack" and batches:
            trainer.ack(batches.pop(rng.randrange(len(batches))))
        elif op == "version":
            version += 1
            buffer.set_version(version)
        elif op == "crash":
            # The trainer process dies with its batches unacknowledged; a new one (maybe another name) takes over.
            batches = []
            trainer = RedisBuffer(buffer.client, buffer.run_id, max_staleness=1, redelivery_idle_ms=10)
            consumer = rng.choice(["t", "t2"])
        stats = buffer.snapshot()
        assert stats["in_flight"] == len(held)
        assert stats["unaccounted"] == 0, (step, op, stats)

    # Drain: finish everything rollout holds or recycled, then train on all of it. Nothing is left over.
    held += buffer.take_groups(10_000)
    buffer.publish([finish(g, version) for g in held], version=version)
    time.sleep(0.02)  # past redelivery_idle_ms, so entries of crashed readers come back
    while (batch := trainer.read_batch(consumer, 50, block_ms=0, trainer_version=version)).summaries:
        trainer.ack(batch)
    for unacked in batches:
        trainer.ack(unacked)
    stats = buffer.snapshot()
    dropped = stats["dropped_filter"] + stats["dropped_stale"]
    assert stats["in_flight"] == stats["partials"] == stats["samples"] == stats["pending"] == 0
    assert stats["issued"] == stats["trained"] + dropped
    assert stats["trained"] > 0 and stats["dropped_stale"] > 0 and stats["dropped_filter"] > 0


def test_buffer_restore_state_returns_every_key_to_the_dumped_state(buffer):
    buffer.put_prompts([make_group(f"p{i}") for i in range(4)])
    buffer.publish([finish(g, 0) for g in buffer.take_groups(2)], version=0)
    buffer.client.hset(buffer.keys.dataset, mapping={"epoch": 0, "offset": 6})
    state, before = buffer.dump_state(), buffer.snapshot()
    # The run goes on past the checkpoint: more prompts issued and trained, the cursor moves.
    buffer.publish([finish(g, 1) for g in buffer.take_groups(2)], version=1)
    buffer.ack(buffer.read_batch("t", 4, block_ms=0, trainer_version=1))
    buffer.client.hset(buffer.keys.dataset, "offset", 8)
    buffer.set_version(2)

    buffer.restore_state(state)
    assert buffer.snapshot() == before
    assert buffer.get_version() == 0
    batch = buffer.read_batch("t", 4, block_ms=0, trainer_version=0)
    assert sorted(g.group_id for g in batch.summaries) == ["p0", "p1"]  # the stream as it was, re-readable


def test_buffer_restore_state_deletes_keys_created_after_the_dump(buffer):
    state = buffer.dump_state()  # an empty run
    buffer.put_prompts([make_group("p0")])
    buffer.put_partials(buffer.take_groups(1))
    buffer.restore_state(state)
    assert buffer.client.exists(*(getattr(buffer.keys, k) for k in ("prompts", "partials", "counters"))) == 0
