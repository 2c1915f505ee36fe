"""Leases on taken groups against a real embedded Redis: a dead taker's groups come back, a live one's stay."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid

import numpy as np
import pytest

from slime_rl.buffer.store import RedisBuffer
from slime_rl.processes import spawn, stop
from tests.integration.test_buffer_store import finish, ids, make_group

LEASE_S = 0.5


@pytest.fixture
def run_id(redis_url):
    run = f"test-{uuid.uuid4().hex[:8]}"
    yield run
    cleaner = RedisBuffer.from_url(redis_url, run)
    cleaner.clear()
    cleaner.close()


@pytest.fixture
def owners(redis_url, run_id):
    """Opens `RedisBuffer`s on the test's run with a short lease; closes them all afterwards."""
    opened: list[RedisBuffer] = []

    def open_owner() -> RedisBuffer:
        opened.append(RedisBuffer.from_url(redis_url, run_id, lease_s=LEASE_S))
        return opened[-1]

    yield open_owner
    for buffer in opened:
        buffer.close()


def consistent(buffer: RedisBuffer) -> dict[str, int]:
    stats = buffer.snapshot()
    assert stats["unaccounted"] == 0, stats
    return stats


def test_dead_owners_groups_return_first_as_partials_with_their_tokens(owners):
    a, b = owners(), owners()
    a.put_prompts([make_group("g0"), make_group("g1"), make_group("g2"), make_group("g3")])
    a.start_heartbeat()
    g0, g1 = a.take_groups(2)
    g0.samples[0].append_tokens(np.array([5]), np.array([-0.5]), 0)
    a.put_partials([g0])  # g0 now carries one token
    taken = a.take_groups(2)
    assert ids(taken) == ["g0", "g2"]
    taken[0].samples[0].append_tokens(np.array([6]), np.array([-0.5]), 0)  # generated, never returned
    a.close()  # the heartbeat stops: A is dead from the buffer's point of view
    assert consistent(b)["in_flight"] == 3

    assert ids(b.take_groups(1)) == ["g3"]  # before the lease expires nothing comes back
    time.sleep(LEASE_S * 1.5)
    back = b.take_groups(3)

    assert sorted(ids(back)) == ["g0", "g1", "g2"]  # reclaimed before any fresh prompt
    g0_back = next(g for g in back if g.group_id == "g0")
    assert g0_back.samples[0].response_ids.tolist() == [5]  # as taken: the token A never returned is gone
    stats = consistent(b)
    assert (stats["reclaimed"], stats["in_flight"], stats["partials"], stats["issued"]) == (3, 4, 0, 4)
    b.publish([finish(g, 0) for g in back], version=0)
    assert consistent(b)["completed"] == 3


async def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_live_owners_lease_is_not_reclaimed_across_several_periods(owners):
    a, b = owners(), owners()
    a.put_prompts([make_group("g0"), make_group("g1")])
    a.start_heartbeat()
    held = a.take_groups(2)

    for _ in range(2):
        time.sleep(LEASE_S)
        assert b.reclaim_expired() == 0
        assert b.take_groups(2) == []
    asyncio.run(busy(LEASE_S * 3))  # the owner's event loop computes without yielding: the thread still beats
    assert b.reclaim_expired() == 0
    a.publish([finish(g, 0) for g in held], version=0)
    stats = consistent(b)
    assert (stats["reclaimed"], stats["completed"], stats["in_flight"]) == (0, 2, 0)


def test_publish_recycle_and_drop_release_their_leases(owners):
    a, b = owners(), owners()
    a.put_prompts([make_group(f"g{i}") for i in range(3)])
    g0, g1, g2 = a.take_groups(3)
    a.publish([finish(g0, 0)], version=0)
    a.put_partials([g1])
    a.record_drops("filter", [g2])
    assert a.client.hlen(a._taken_key) == 0

    time.sleep(LEASE_S * 1.5)  # A never heartbeats: its lease expires holding nothing

    assert b.reclaim_expired() == 0
    stats = consistent(b)
    assert (stats["reclaimed"], stats["partials"], stats["dropped_filter"], stats["in_flight"]) == (0, 1, 1, 0)


def test_owner_whose_lease_lapsed_cannot_return_a_reclaimed_group_twice(owners):
    a, b = owners(), owners()
    a.put_prompts([make_group("g0")])
    (g0,) = a.take_groups(1)
    time.sleep(LEASE_S * 1.5)  # A stalls past its lease without a heartbeat
    assert b.reclaim_expired() == 1

    a.publish([finish(g0, 0)], version=0)  # late: the reclaimed copy is the one that counts

    stats = consistent(b)
    assert (stats["completed"], stats["reclaimed"], stats["partials"], stats["in_flight"]) == (0, 1, 1, 0)


def test_restored_checkpoint_returns_its_in_flight_groups_on_the_next_take(owners):
    a, b = owners(), owners()
    a.put_prompts([make_group("g0"), make_group("g1")])
    a.start_heartbeat()
    a.take_groups(1)
    state = a.dump_state()  # g0 in flight, leased to A
    a.publish([finish(g, 0) for g in a.take_groups(1)], version=0)

    a.restore_state(state)  # the checkpointed run's takers are gone: g0 is back in partials at once

    stats = consistent(b)
    assert (stats["reclaimed"], stats["partials"], stats["in_flight"]) == (1, 1, 0)
    assert ids(b.take_groups(2)) == ["g0", "g1"]


_TAKER = """
import sys, time
from slime_rl.buffer.store import RedisBuffer
buffer = RedisBuffer.from_url(sys.argv[1], sys.argv[2], lease_s=float(sys.argv[3]))
buffer.start_heartbeat()
buffer.take_groups(2)
time.sleep(600)
"""


def test_groups_of_a_sigkilled_taker_process_come_back_after_its_lease(owners, tmp_path, redis_url, run_id):
    survivor = owners()
    survivor.put_prompts([make_group("g0"), make_group("g1"), make_group("g2")])
    argv = [sys.executable, "-c", _TAKER, redis_url, run_id, str(LEASE_S)]
    taker = spawn(argv, log_path=str(tmp_path / "taker.log"), env=os.environ | {"PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 30
        while consistent(survivor)["in_flight"] < 2:
            assert taker.poll() is None and time.monotonic() < deadline, (tmp_path / "taker.log").read_text()
            time.sleep(0.05)
        time.sleep(LEASE_S * 3)
        assert survivor.reclaim_expired() == 0  # alive and heartbeating
        os.kill(taker.pid, signal.SIGKILL)
        taker.wait()
    finally:
        stop(taker)

    assert ids(survivor.take_groups(3)) == ["g2"]  # the lease has not run out yet
    time.sleep(LEASE_S * 1.5)
    assert sorted(ids(survivor.take_groups(3))) == ["g0", "g1"]
    stats = consistent(survivor)
    assert (stats["reclaimed"], stats["in_flight"]) == (2, 3)
