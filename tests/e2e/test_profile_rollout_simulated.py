"""`slime-rl profile-rollout` of the toy with 16 simulated engines in one engine host process (one placement
bundle on a 2-CPU cluster): profile.json, trace.json and report.html, with a throughput entry per engine."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

NUM_ENGINES, NUM_STEPS = 16, 2


def test_profile_rollout_with_sixteen_simulated_engines_in_one_process_writes_the_three_files(tmp_path):
    overrides = [
        "experiment=toy",
        "engine=simulated",
        f"output_dir={tmp_path}",
        "name=sim",
        "sft.steps=0",
        "eval.interval=0",
        f"engine.num_engines={NUM_ENGINES}",
        f"engine.simulated.engines_per_process={NUM_ENGINES}",
        "engine.simulated.decode_step_base_ms=2",
        "engine.simulated.length_median=6",
        "cluster.num_cpus=2",
        "rollout.rollout_batch_size=8",
        "trainer.micro_batch_size=8",
        f"profile.num_steps={NUM_STEPS}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "slime_rl.cli", "profile-rollout", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "sim"
    assert all((run_dir / name).stat().st_size > 0 for name in ("profile.json", "trace.json", "report.html"))
    profile = json.loads((run_dir / "profile.json").read_text())
    per_engine = profile["throughput"]["per_engine"]
    assert len(per_engine) == NUM_ENGINES
    assert len(profile["step_times_s"]) == NUM_STEPS
    assert profile["throughput"]["samples"] == NUM_STEPS * 8 * 8  # rollout_batch_size x n_samples_per_prompt
