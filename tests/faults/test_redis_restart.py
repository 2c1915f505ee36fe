"""Redis restarts mid-run (AOF on): the same `RedisBuffer` reconnects, nothing acknowledged is lost."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal

import pytest

from slime_rl.buffer import leases
from slime_rl.buffer.server import EmbeddedRedis, RedisAddress, resolve_redis_binary, server_argv
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config.buffer import BufferConfig
from slime_rl.processes import free_port, spawn, stop
from tests.integration.test_buffer_store import finish, ids, make_group

RUN = "restart"


def fill(buffer: RedisBuffer) -> list:
    """Prompts taken, two published, read and acknowledged, one published and unread; returns the one held."""
    buffer.put_prompts([make_group(f"g{i}") for i in range(5)])
    g0, g1, g2, g3 = buffer.take_groups(4)
    buffer.publish([finish(g0, 0), finish(g1, 0)], version=0)
    assert buffer.ack(buffer.read_batch("t", 2, block_ms=0, trainer_version=0)) == 2
    buffer.publish([finish(g2, 0)], version=0)
    return [g3]


def carry_on(buffer: RedisBuffer, held: list) -> None:
    """Run the rest through the buffer's Lua moves and check every group is trained exactly once."""
    buffer.publish([finish(g, 0) for g in held + buffer.take_groups(5)], version=0)
    batch = buffer.read_batch("t", 5, block_ms=0, trainer_version=0)
    assert sorted(ids(batch.summaries)) == ["g2", "g3", "g4"]
    buffer.ack(batch)
    stats = buffer.snapshot()
    assert (stats["issued"], stats["trained"], stats["in_flight"], stats["unaccounted"]) == (5, 5, 0, 0)


@pytest.fixture
def embedded(tmp_path):
    server = EmbeddedRedis(BufferConfig(appendonly=True), data_dir=tmp_path)
    address = server.start()
    buffer = RedisBuffer.from_url(address.url, RUN, reconnect_timeout_s=30)
    yield server, buffer
    buffer.close()
    server.stop()


def test_embedded_server_sigkilled_mid_run_is_restarted_and_the_buffer_carries_on(embedded):
    server, buffer = embedded
    held = fill(buffer)
    before, old_pid = buffer.snapshot(), server.pid
    release_sha = hashlib.sha1(leases.RELEASE.encode()).hexdigest()
    assert buffer.client.script_exists(release_sha) == [True]

    os.kill(old_pid, signal.SIGKILL)
    after = buffer.snapshot()  # retries until the supervisor has the server back

    assert server.pid != old_pid
    assert after == before  # every acknowledged write survived the kill
    assert buffer.client.script_exists(release_sha) == [False]  # so carry_on's first publish meets NOSCRIPT
    carry_on(buffer, held)


def test_externally_restarted_server_on_the_same_port_and_dir_is_reconnected(tmp_path):
    address = RedisAddress("127.0.0.1", free_port(), secrets.token_hex(8))
    argv = server_argv(resolve_redis_binary(), address, tmp_path, appendonly=True)
    log = str(tmp_path / "redis.log")
    procs = [spawn(argv, log_path=log)]
    buffer = RedisBuffer.from_url(address.url, RUN, reconnect_timeout_s=30)  # its first call waits for startup
    try:
        held = fill(buffer)
        before = buffer.snapshot()
        procs[0].terminate()  # SIGTERM by PID: an operator restarting the service
        procs[0].wait()
        procs.append(spawn(argv, log_path=log))

        assert buffer.snapshot() == before
        carry_on(buffer, held)
    finally:
        buffer.close()
        for proc in procs:
            stop(proc)
