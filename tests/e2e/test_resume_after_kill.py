"""A toy run killed with SIGKILL mid-way resumes from its last checkpoint with the buffer that checkpoint saw:
every step is trained exactly once, and the counters invariant holds."""

import os
import subprocess
import sys
import time

import pytest

from slime_rl.config import load_config
from slime_rl.observability.metrics import read_step_records
from slime_rl.orchestration.driver import run_training
from slime_rl.processes import kill_tree
from slime_rl.trainer.checkpoint import latest_step_dir

pytestmark = pytest.mark.slow

NUM_STEPS = 8
BATCH_GROUPS = 16  # experiment=toy's rollout.rollout_batch_size


def _logged_steps(path) -> list[int]:
    return [r["step"] for r in read_step_records(path)]


@pytest.mark.parametrize("mode", ["sync", "fully_async"])
def test_toy_run_killed_after_a_checkpoint_resumes_without_losing_or_repeating_a_step(tmp_path, mode):
    overrides = [
        "experiment=toy",
        f"output_dir={tmp_path}",
        "sft.steps=0",
        "eval.interval=0",
        "trainer.save_interval=2",
        f"mode={mode}",
        f"mode.num_steps={NUM_STEPS}",
    ]
    run_dir = tmp_path / "toy"
    metrics_path = run_dir / "metrics.jsonl"
    driver = subprocess.Popen(
        [sys.executable, "-m", "slime_rl.cli", "train", *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    try:
        # Kill after step 3 is trained and logged: checkpoint 2 is the newest, step 3 is past it.
        deadline = time.monotonic() + 300
        while 3 not in _logged_steps(metrics_path):
            assert driver.poll() is None, f"the first run exited early with code {driver.returncode}"
            assert time.monotonic() < deadline, "the first run did not reach step 3 in 300 s"
            time.sleep(0.1)
    finally:
        kill_tree(driver.pid)
    checkpoint = latest_step_dir(run_dir / "checkpoints")
    assert checkpoint is not None
    killed_at = max(_logged_steps(metrics_path))
    checkpoint_step = int(checkpoint.name.removeprefix("step_"))
    assert checkpoint_step < killed_at  # the kill lost trained steps: the resume must redo them, once

    run_training(load_config(overrides))
    records = read_step_records(metrics_path)
    resumed = records[killed_at:]  # the first run logged steps 1..killed_at
    assert [r["step"] for r in resumed] == list(range(checkpoint_step + 1, NUM_STEPS + 1))
    assert all(r["buffer/unaccounted"] == 0 for r in resumed)
    # The buffer went back to the checkpoint with the weights: groups trained after it count once, not twice.
    assert resumed[-1]["buffer/trained"] == NUM_STEPS * BATCH_GROUPS
