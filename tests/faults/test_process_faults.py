"""Toy runs survive the death of their rollout worker and of their Redis server; a dead trainer rank
ends the run with a message that names the rank and the resume command, from which the run resumes; a
hung rollout worker is caught by the watchdog, which dumps every stack and names the stage.

Wherever the run goes on, the buffer's counters invariant holds on every logged step and no group is trained twice.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

import psutil
import pytest

from slime_rl.buffer.server import resolve_redis_binary
from slime_rl.processes import process_tree
from tests.faults.toy_runs import step_records, toy_overrides, toy_training, wait_for_step

pytestmark = pytest.mark.slow

NUM_STEPS = 6
BATCH_GROUPS = 16  # experiment=toy's rollout.rollout_batch_size


def _find(pid: int, marker: str) -> psutil.Process:
    """The one process of the run whose name or first command-line word starts with `marker` (Ray titles its
    actor workers `ray::ClassName...`; Redis names itself `redis-server` or `valkey-server`)."""
    found = []
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            title = (proc.cmdline() or [""])[0]
            if proc.name().startswith(marker) or title.startswith(marker):
                found.append(proc)
    assert len(found) == 1, f"{len(found)} processes match {marker!r}: {found}"
    return found[0]


def _assert_trained_every_step_once(run_dir, num_steps: int) -> list[dict]:
    """Every step was logged (a resumed run logs the steps after its checkpoint again), the invariant held on
    each, and the buffer counts each step's groups trained once; returns the step records."""
    records = step_records(run_dir)
    assert sorted({r["step"] for r in records}) == list(range(1, num_steps + 1))
    assert all(r["buffer/unaccounted"] == 0 for r in records)
    assert records[-1]["buffer/trained"] == num_steps * BATCH_GROUPS
    return records


@pytest.mark.parametrize("mode", ["sync", "fully_async"])
def test_run_survives_its_rollout_worker_dying(tmp_path, mode):
    run_dir = tmp_path / "toy"
    overrides = toy_overrides(tmp_path, f"mode={mode}", f"mode.num_steps={NUM_STEPS}", "buffer.lease_s=3")
    with toy_training(overrides, tmp_path / "driver.log") as driver:
        wait_for_step(driver, run_dir, 2)
        _find(driver.pid, "ray::RolloutWorker").send_signal(signal.SIGKILL)
        exit_code = driver.wait(timeout=600)
    assert exit_code == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert len(_assert_trained_every_step_once(run_dir, NUM_STEPS)) == NUM_STEPS


def test_run_survives_its_redis_server_dying(tmp_path):
    run_dir = tmp_path / "toy"
    overrides = toy_overrides(tmp_path, "mode=fully_async", f"mode.num_steps={NUM_STEPS}")  # AOF on, as by default
    with toy_training(overrides, tmp_path / "driver.log") as driver:
        wait_for_step(driver, run_dir, 2)
        _find(driver.pid, resolve_redis_binary().name).send_signal(signal.SIGKILL)
        exit_code = driver.wait(timeout=600)
    assert exit_code == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert len(_assert_trained_every_step_once(run_dir, NUM_STEPS)) == NUM_STEPS


def test_dead_trainer_rank_ends_the_run_naming_it_and_the_resume_command_which_resumes(tmp_path):
    run_dir = tmp_path / "toy"
    overrides = toy_overrides(tmp_path, f"mode.num_steps={NUM_STEPS}", "trainer.save_interval=2")
    with toy_training(overrides, tmp_path / "driver.log") as driver:
        wait_for_step(driver, run_dir, 3)
        _find(driver.pid, "ray::TrainerRank").send_signal(signal.SIGKILL)
        exit_code = driver.wait(timeout=600)
    output = (tmp_path / "driver.log").read_text()
    assert exit_code == 1, output[-3000:]
    error = next(line for line in output.splitlines() if line.startswith("slime-rl train: error:"))
    assert "trainer rank 0 died" in error and "resumes it from the checkpoint" in error, error
    command = error.split("`")[1]
    assert command == "slime-rl train " + " ".join(overrides), command

    resumed = subprocess.run(
        [sys.executable, "-m", "slime_rl.cli", "train", *overrides], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    _assert_trained_every_step_once(run_dir, NUM_STEPS)


def test_hung_rollout_worker_is_reported_by_the_watchdog_with_every_stack(tmp_path):
    run_dir = tmp_path / "toy"
    watchdog = ["watchdog.timeout_s=8", "watchdog.check_interval_s=1"]
    overrides = toy_overrides(tmp_path, "mode=sync", f"mode.num_steps={NUM_STEPS}", *watchdog)
    with toy_training(overrides, tmp_path / "driver.log") as driver:
        wait_for_step(driver, run_dir, 2)
        worker = _find(driver.pid, "ray::RolloutWorker")
        worker.send_signal(signal.SIGSTOP)  # alive, holding its groups, answering nothing
        exit_code = driver.wait(timeout=300)
    output = (tmp_path / "driver.log").read_text()
    assert exit_code == 1, output[-3000:]
    error = next(line for line in output.splitlines() if line.startswith("slime-rl train: error:"))
    assert "waiting for RolloutWorker.generate" in error, error
    (dump,) = run_dir.glob("hang_*")
    assert "RolloutWorker" in (dump / "summary.txt").read_text()
    assert (dump / "driver.txt").is_file()
    assert any(f"{worker.pid}_" in path.name for path in dump.iterdir()), sorted(p.name for p in dump.iterdir())
