"""A toy run survives one of its two engines dying (kill -9) or hanging (SIGSTOP), in every loop, and its
only engine dying.

The engine is taken out of the router, restarted on its port, synced to the current weights and put
back; the run trains every step, the buffer's counters invariant holds on every step, and the run ends
with both engines serving.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.faults.toy_runs import engine_processes, step_records, toy_overrides, toy_training, wait_for_step

pytestmark = pytest.mark.slow

NUM_STEPS = 24  # long enough for the engine to be back: a restart takes 4-10 s on two busy cores
WATCH = [  # short health checks, so a hang is judged within seconds
    "engine.health_check_interval_s=0.5",
    "engine.health_check_timeout_s=2",
    "engine.health_check_failures=2",
]


def _events(run_dir) -> list[dict]:
    path = run_dir / "logs" / "engine_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    ("mode", "fault", "num_engines"),
    [
        ("sync", signal.SIGKILL, 2),  # with APRIL: its aborts must skip the dead engine
        ("fully_async", signal.SIGKILL, 2),
        ("one_step_async", signal.SIGSTOP, 2),
        ("fully_async", signal.SIGKILL, 1),  # as `make demo` runs: no other engine to take over meanwhile
    ],
    ids=["sync-april-kill", "fully_async-kill", "one_step_async-hang", "fully_async-kill-lone-engine"],
)
def test_run_survives_an_engine_that_dies_or_hangs(tmp_path, mode, fault, num_engines):
    run_dir = tmp_path / "toy"
    april = ["rollout.use_april=true"] if mode == "sync" else []
    overrides = toy_overrides(
        tmp_path, f"mode={mode}", f"mode.num_steps={NUM_STEPS}", *WATCH, *april, num_engines=num_engines
    )
    with toy_training(overrides, tmp_path / "driver.log") as driver:
        wait_for_step(driver, run_dir, 2)
        victim = engine_processes(driver.pid)[0]
        victim.send_signal(fault)
        try:
            exit_code = driver.wait(timeout=600)
        finally:
            if fault == signal.SIGSTOP and victim.is_running():
                victim.send_signal(signal.SIGCONT)
    log_tail = (tmp_path / "driver.log").read_text()[-3000:]
    assert exit_code == 0, log_tail

    records = step_records(run_dir)
    assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1)), log_tail
    assert all(r["buffer/unaccounted"] == 0 for r in records)
    assert records[-1]["buffer/trained"] == NUM_STEPS * 16  # experiment=toy: 16 groups per step, each once
    assert records[-1]["engines/serving"] == num_engines  # the engine came back

    events = [(e["engine"], e["event"]) for e in _events(run_dir)]
    down = [i for i, what in events if what == "down"]
    assert len(down) == 1, events
    after = events[events.index((down[0], "down")) :]
    assert after == [(down[0], "down"), (down[0], "restarted"), (down[0], "serving")], events
    reason = next(e["reason"] for e in _events(run_dir) if e["event"] == "down")
    assert ("hung" in reason) if fault == signal.SIGSTOP else ("gone" in reason or "refuses" in reason), reason
