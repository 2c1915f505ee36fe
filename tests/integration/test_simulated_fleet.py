"""EngineFleet with kind=simulated on a local Ray: several engines per host process, one bundle per host, and a
host's process death taking out all its engines, which its restart brings back on their ports."""

from __future__ import annotations

import os
import signal

import httpx

from slime_rl.config import ClusterConfig, EngineConfig, TrainerConfig
from slime_rl.config.engine import SimulatedEngineConfig
from slime_rl.orchestration.engines import AWAITING_SYNC, DOWN, SERVING
from tests.polling import wait_until

NUM_ENGINES, PER_PROCESS = 5, 3  # hosts: engines 0-2 and 3-4


def _cfg() -> EngineConfig:
    sim = SimulatedEngineConfig(engines_per_process=PER_PROCESS, vocab_size=100, eos_token_id=2)
    return EngineConfig(
        kind="simulated", num_engines=NUM_ENGINES, simulated=sim, startup_timeout_s=60, health_check_timeout_s=5
    )


def test_simulated_fleet_hosts_engines_per_process_and_restarts_a_dead_host_on_its_ports(tmp_path):
    import ray

    from slime_rl.orchestration.cluster import ray_session
    from slime_rl.orchestration.engine_health import EngineMonitor
    from slime_rl.orchestration.engines import EngineFleet
    from slime_rl.orchestration.placement import create_placement

    cfg = _cfg()
    log_dir = tmp_path / "logs"
    with ray_session(ClusterConfig(num_cpus=2, object_store_memory_mb=100)):
        placement = create_placement(ClusterConfig(num_cpus=2), TrainerConfig(), cfg, with_trainer=False)
        try:
            assert len(placement.plan.bundles) == 2  # one per host process, not one per engine
            with EngineFleet(cfg, "simulated", placement, log_dir=log_dir) as fleet:
                assert fleet.host_engines == [[0, 1, 2], [3, 4]]
                urls = fleet.engine_urls
                assert len(set(urls)) == NUM_ENGINES
                assert sorted(fleet.router.list_workers()) == sorted(urls)
                assert (log_dir / "engines_0-2.log").exists() and (log_dir / "engines_3-4.log").exists()
                monitor = EngineMonitor(fleet, cfg)
                assert monitor.check() == []

                os.kill(ray.get(fleet.hosts[0].pid.remote()), signal.SIGKILL)
                wait_until(lambda: not fleet.is_alive(0, timeout_s=5), "the killed host to be down")
                taken_out = monitor.check()  # also starts the host's restart, on a thread
                assert sorted(taken_out) == [0, 1, 2]
                assert [fleet.state(i) for i in (3, 4)] == [SERVING, SERVING]
                wait_until(
                    lambda: all(fleet.state(i) == AWAITING_SYNC for i in (0, 1, 2)), "restarted engines awaiting sync"
                )
                assert fleet.engine_urls == urls  # same ports
                assert sorted(fleet.router.list_workers()) == sorted(urls[3:])
                for url in urls[:3]:
                    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
                    fleet.put_back(url, version=0)
                assert sorted(fleet.serving_urls()) == sorted(urls)
                assert sorted(fleet.router.list_workers()) == sorted(urls)
                assert DOWN not in {fleet.state(i) for i in range(NUM_ENGINES)}
                assert [e.restarts for e in fleet.engines] == [1, 1, 1, 0, 0]
        finally:
            placement.remove()


def test_simulated_process_restarts_its_engines_on_their_ports(tmp_path):
    from slime_rl.engines.simulated.launcher import SimulatedProcess

    process = SimulatedProcess(_cfg(), "simulated", 3, log_path=str(tmp_path / "sim.log"))
    try:
        urls = process.start()
        first_pid = process.pid
        assert len(set(urls)) == 3
        assert process.restart(force=True) == urls
        assert process.pid != first_pid and process.is_alive()
        for url in urls:
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        process.stop()
    assert not process.is_alive()
