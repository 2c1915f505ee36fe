"""Embedded Redis and local Ray, started for real on loopback and stopped by PID."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import redis

from slime_rl.buffer.server import EmbeddedRedis, redis_service
from slime_rl.config import BufferConfig, ClusterConfig
from slime_rl.errors import ServiceError
from slime_rl.processes import pid_alive


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_embedded_redis_requires_password_binds_loopback_and_stops():
    server = EmbeddedRedis(BufferConfig(appendonly=False))
    address = server.start()
    pid = server.pid
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=address.host, port=address.port).ping()
        client = redis.Redis.from_url(address.url)
        assert client.ping()
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.close()
    finally:
        server.stop()
    assert _wait_gone(pid)


def test_embedded_redis_dies_when_its_parent_is_sigkilled(tmp_path):
    script = textwrap.dedent(
        """
        import sys, time
        from slime_rl.buffer.server import EmbeddedRedis
        from slime_rl.config import BufferConfig
        server = EmbeddedRedis(BufferConfig(appendonly=False))
        server.start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        redis_pid = int(parent.stdout.readline())
        assert pid_alive(redis_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait_gone(redis_pid), f"embedded Redis pid {redis_pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_redis_service_connects_to_an_external_url():
    with (
        EmbeddedRedis(BufferConfig(appendonly=False)) as external,
        redis_service(BufferConfig(url=external.url)) as url,
    ):
        assert url == external.url
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()


def test_redis_service_reports_an_unreachable_url():
    with (
        pytest.raises(ServiceError, match="cannot reach buffer.url"),
        redis_service(BufferConfig(url="redis://127.0.0.1:1/0")),
    ):
        pass


def test_local_ray_runs_an_actor_and_shuts_down():
    import ray

    from slime_rl.orchestration.cluster import ray_session

    with ray_session(ClusterConfig(num_cpus=2, object_store_memory_mb=100)):

        @ray.remote(num_cpus=1)
        class Echo:
            def echo(self, value: int) -> int:
                return value

        assert ray.get(Echo.remote().echo.remote(7)) == 7
        assert ray.cluster_resources()["CPU"] == 2
    assert not ray.is_initialized()
