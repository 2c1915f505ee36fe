"""What a killed engine costs a run: a fully-async toy run with two engines, one of them killed with SIGKILL.

Each repeat runs `slime-rl train experiment=toy mode=fully_async engine.num_engines=2` in its own process,
waits until `--kill-after` steps are trained, SIGKILLs one engine server by PID and lets the run finish.
From the run's `logs/engine_events.jsonl` and `metrics.jsonl`:
- `detect_s`: kill -> the engine taken out of the router;
- `restore_s`: kill -> the restarted engine serving again at the current weights (full capacity);
- `steps_lost`: steps the run did not train (of `--steps`); `samples_lost`: samples the buffer's counters
  cannot account for (`unaccounted` groups x samples per group) plus samples the run should have trained
  and did not;
- `throughput_share_during_recovery`: trained tokens per second over the steps that overlap
  [kill, restore], over the same rate of the steps before the kill (the baseline, same run).
Medians over `--repeats` runs, and every run's figures. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.observability.metrics import read_step_records
from slime_rl.processes import kill_tree, process_tree

BATCH_GROUPS, GROUP_SIZE = 16, 8  # experiment=toy: rollout_batch_size, n_samples_per_prompt


def tokens_per_s(records: list[dict]) -> float:
    """Trained tokens over the wall time of `records` (consecutive steps; each ends at its `time`)."""
    elapsed = sum(r["perf/step_time_s"] for r in records)
    return sum(r["train/tokens"] for r in records) / elapsed if elapsed else 0.0


def run_once(out_dir: Path, num_steps: int, kill_after: int, extra: list[str]) -> dict[str, float]:
    run_dir = out_dir / "toy"
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "slime_rl.cli", "train", "experiment=toy", f"output_dir={out_dir}"]
    argv += ["sft.steps=0", "eval.interval=0", "mode=fully_async", f"mode.num_steps={num_steps}"]
    argv += ["engine.num_engines=2", "cluster.num_cpus=3", "buffer.appendonly=false", *extra]
    log_path = out_dir / "driver.log"
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        while len(read_step_records(run_dir / "metrics.jsonl")) < kill_after:
            if driver.poll() is not None:
                raise SystemExit(f"the run exited with code {driver.returncode} before step {kill_after}: {log_path}")
            time.sleep(0.05)
        engines = [p for p in process_tree(driver.pid) if "slime_rl.engines.native" in p.cmdline()]
        killed_at = time.time()
        engines[0].send_signal(signal.SIGKILL)
        exit_code = driver.wait(timeout=1800)
    finally:
        kill_tree(driver.pid)
    events = [json.loads(line) for line in (run_dir / "logs" / "engine_events.jsonl").read_text().splitlines()]
    down = next((e["time"] for e in events if e["event"] == "down"), None)
    back = next((e["time"] for e in events if e["event"] == "serving"), None)
    records = read_step_records(run_dir / "metrics.jsonl")
    before = [r for r in records if r["time"] < killed_at]
    # A step overlaps recovery if it ended after the kill and began before the engine was back.
    during = [r for r in records if r["time"] > killed_at and r["time"] - r["perf/step_time_s"] < (back or r["time"])]
    trained_groups = records[-1]["buffer/trained"] if records else 0
    unaccounted = records[-1]["buffer/unaccounted"] if records else 0
    return {
        "exit_code": exit_code,
        "detect_s": down - killed_at if down else float("nan"),
        "restore_s": back - killed_at if back else float("nan"),
        "steps_lost": num_steps - len(records),
        "samples_lost": (abs(unaccounted) + max(num_steps * BATCH_GROUPS - trained_groups, 0)) * GROUP_SIZE,
        "throughput_share_during_recovery": tokens_per_s(during) / tokens_per_s(before) if during else float("nan"),
        "steady_tokens_per_s": tokens_per_s(before),
        "recovery_tokens_per_s": tokens_per_s(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="long enough for the engine to come back")
    parser.add_argument("--kill-after", type=int, default=4, help="steps trained before the kill")
    parser.add_argument("--out-dir", type=Path, default=None, help="run directories (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            out_dir = (args.out_dir or Path(tmp)) / f"run_{repeat}"
            runs.append(run_once(out_dir, args.steps, args.kill_after, args.overrides))
            print(json.dumps(runs[-1]), file=sys.stderr)  # progress: one line per finished run
    keys = ("detect_s", "restore_s", "steps_lost", "samples_lost", "throughput_share_during_recovery")
    print(
        json.dumps(
            {
                "benchmark": "fault_recovery",
                "case": "kill -9 of one of 2 native engines, fully_async toy run",
                **{key: statistics.median(r[key] for r in runs) for key in keys},
                "runs": runs,
                "steps": args.steps,
                "kill_after": args.kill_after,
                "overrides": args.overrides,
                "commit": git_commit(),
                "hardware": hardware_info(),
            }
        )
    )


if __name__ == "__main__":
    main()
