"""A whole toy run exposes nothing beyond loopback: every process it starts (Ray, Redis, engines, router,
actors) listens on loopback only, engines and the router on `engine.host`, and Redis wants its password.

Agents and engines open ports late, so the run's process tree is sampled every 0.2 s from start to exit.
"""

from __future__ import annotations

import contextlib
import time

import psutil
import pytest
import redis

from slime_rl.config import EngineConfig
from slime_rl.processes import process_tree
from tests.faults.toy_runs import NATIVE_ENGINE_MODULE, step_records, toy_overrides, toy_training
from tests.sockets import is_loopback, listening_sockets, unmapped

pytestmark = pytest.mark.slow

NUM_STEPS = 2
ROUTER_MODULE = "sglang_router.launch_router"


def kill_processes(procs: list[psutil.Process]) -> None:
    """SIGKILL those of `procs` still running (psutil checks the PID was not reused) and reap them."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running():
                proc.kill()
    psutil.wait_procs(procs, timeout=30)


def _role(proc: psutil.Process) -> str | None:
    """The role of a process whose addresses this test checks ("engine", "router" or "redis"), else None."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
        cmdline = proc.cmdline()
        if NATIVE_ENGINE_MODULE in cmdline:
            return "engine"
        if ROUTER_MODULE in cmdline:
            return "router"
        if any(server in proc.name() for server in ("redis-server", "valkey-server")):  # it rewrites its cmdline
            return "redis"
    return None


def test_toy_run_listens_on_loopback_only_and_its_redis_needs_a_password(tmp_path):
    run_dir = tmp_path / "toy"
    seen: set[tuple[int, str, str, int]] = set()
    procs: dict[int, psutil.Process] = {}  # every process of the run ever seen, killed by PID at the end
    roles: dict[int, str] = {}
    redis_refusals: dict[int, str] = {}  # port -> the error a password-less client got
    with toy_training(toy_overrides(tmp_path, f"mode.num_steps={NUM_STEPS}"), tmp_path / "run.log") as driver:
        try:
            deadline = time.monotonic() + 300
            while driver.poll() is None:
                assert time.monotonic() < deadline, "the toy run did not finish in 300 s"
                current = process_tree(driver.pid)
                procs |= {proc.pid: proc for proc in current}
                roles |= {proc.pid: role for proc in current if proc.pid not in roles and (role := _role(proc))}
                sockets = listening_sockets(current)
                seen |= sockets
                for pid, _, _, port in sockets:
                    if roles.get(pid) == "redis" and port not in redis_refusals:
                        with pytest.raises(redis.AuthenticationError) as refused:  # NOAUTH
                            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).ping()
                        redis_refusals[port] = str(refused.value)
                time.sleep(0.2)
        finally:
            # A process the driver failed to stop outlives it, reparented, out of `process_tree(driver.pid)`.
            kill_processes(list(procs.values()))
    assert driver.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert [r["step"] for r in step_records(run_dir)] == list(range(1, NUM_STEPS + 1))

    ips = {role: {unmapped(ip) for pid, _, ip, _ in seen if roles.get(pid) == role} for role in ("engine", "router")}
    assert ips == {"engine": {EngineConfig.host}, "router": {EngineConfig.host}}, ips
    assert redis_refusals, f"no embedded Redis was seen listening; roles seen: {sorted(set(roles.values()))}"
    exposed = sorted((pid, name, ip, port) for pid, name, ip, port in seen if not is_loopback(ip))
    assert not exposed, f"the run listens beyond loopback (pid, process, ip, port): {exposed}"
