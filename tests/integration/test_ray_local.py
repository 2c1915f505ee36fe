"""A local run's Ray: loopback only, token auth on, and not misled by a leftover cluster address.

Each test starts its own local Ray through `ray_session` and stops it with `ray.shutdown()` only.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

from slime_rl.config import ClusterConfig
from tests.sockets import is_loopback, listening_sockets


def _ray_processes() -> list[psutil.Process]:
    """This process and every process it started (Ray's GCS, raylet, agents and workers)."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


@pytest.fixture
def short_ray_tmpdir(monkeypatch):
    """A private RAY_TMPDIR, short enough for Ray's unix socket paths (107 bytes)."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_local_ray_ignores_a_stale_cluster_file_and_ray_address(short_ray_tmpdir, monkeypatch):
    import ray

    from slime_rl.orchestration.cluster import ray_session

    # What a crashed `ray start` leaves behind: the address of a cluster that no longer exists.
    os.makedirs(os.path.join(short_ray_tmpdir, "ray"))
    with open(os.path.join(short_ray_tmpdir, "ray", "ray_current_cluster"), "w") as f:
        f.write("127.0.0.1:1")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")

    with ray_session(ClusterConfig(num_cpus=1, object_store_memory_mb=80)):
        assert ray.cluster_resources()["CPU"] == 1
    assert not ray.is_initialized()


def test_local_ray_listens_on_loopback_only_with_token_auth(short_ray_tmpdir):
    import ray

    from slime_rl.orchestration.cluster import ray_session

    before = listening_sockets(_ray_processes())
    with ray_session(ClusterConfig(num_cpus=1, object_store_memory_mb=80)):

        @ray.remote(num_cpus=1)
        def ping() -> int:
            return 1

        assert ray.get(ping.remote()) == 1  # a worker process is up and listening too
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        # Agents open their ports a moment after start: sample for a while and judge every socket seen.
        seen: set[tuple[int, str, str, int]] = set()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            seen |= listening_sockets(_ray_processes()) - before
            time.sleep(0.3)
        # Token auth: the GCS and the raylets, which check every request, started in token mode.
        auth_modes = {proc.name(): proc.environ().get("RAY_AUTH_MODE") for proc in _ray_processes()}
    names = {name for _, name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, names
    exposed = sorted((name, ip, port) for _, name, ip, port in seen if not is_loopback(ip))
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    assert auth_modes["gcs_server"] == auth_modes["raylet"] == "token", auth_modes


def test_joining_a_token_cluster_without_the_token_names_the_fix(tmp_path):
    # In a fresh process: Ray caches the token of the process's first cluster.
    script = textwrap.dedent(
        """
        from slime_rl.config import ClusterConfig
        from slime_rl.errors import ServiceError
        from slime_rl.orchestration.cluster import init_ray

        try:
            init_ray(ClusterConfig(address="127.0.0.1:1"))
        except ServiceError as err:
            print(err)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(RAY_AUTH_MODE="token", HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert "cluster.address='127.0.0.1:1'" in result.stdout, result.stdout + result.stderr
    assert "RAY_AUTH_TOKEN" in result.stdout and "~/.ray/auth_token" in result.stdout, result.stdout
