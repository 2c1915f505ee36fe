"""EngineFleet on a local Ray cluster: engine and router logs go to the run dir, and a failed start says why."""

from __future__ import annotations

import pytest

from slime_rl.config import ClusterConfig, EngineConfig, TrainerConfig
from slime_rl.errors import ServiceError


def test_engine_fleet_failed_engine_start_shows_the_engine_log_tail_from_the_run_dir(tmp_path):
    import ray

    from slime_rl.orchestration.cluster import ray_session
    from slime_rl.orchestration.engines import EngineFleet
    from slime_rl.orchestration.placement import create_placement

    missing_model = str(tmp_path / "no_such_model")
    log_dir = tmp_path / "run" / "logs"
    with ray_session(ClusterConfig(num_cpus=2, object_store_memory_mb=100)):
        placement = create_placement(ClusterConfig(), TrainerConfig(), EngineConfig(), with_trainer=False)
        try:
            with (
                pytest.raises(ray.exceptions.RayTaskError) as failed,
                EngineFleet(EngineConfig(startup_timeout_s=120), missing_model, placement, log_dir=log_dir),
            ):
                pass
        finally:
            placement.remove()
    assert isinstance(failed.value.as_instanceof_cause(), ServiceError)
    engine_log = (log_dir / "engine_0.log").read_text()
    assert "no_such_model" in engine_log
    last_line = engine_log.strip().splitlines()[-1]
    assert "Log tail" in str(failed.value) and last_line in str(failed.value)
