"""Wall-clock per training step of `sync`, `one_step_async` and `fully_async` on the toy workload, in one run.

Each mode runs the real driver (local Ray, embedded Redis, native engine behind sglang-router, Megatron
trainer on CPU) for `--steps` steps with disaggregated placement: one CPU for the engine, one for the
trainer. The workload (toy model size, response length, batch) is sized so that rollout and training take
comparable time. The first `--warmup` steps and the last step (which saves a checkpoint) are left out;
a run's figures are medians over its remaining steps. Modes run in turn (sync, one-step, fully async,
sync, ...) for `--repeats` rounds, and each reported figure is the median over the rounds: on a small
machine one run's step times move by about 10% with whatever else the CPU is doing.

`ideal` = (T_rollout + T_train) / max(T_rollout, T_train) from the sync run's own timings: the speedup a
perfect overlap of the two would give. Prints one JSON object; never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from slime_rl.config import load_config
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.observability.metrics import read_metrics
from slime_rl.orchestration.driver import run_training

MODES = ("sync", "one_step_async", "fully_async")


def workload_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "experiment=toy",
        "sft.steps=0",
        f"prepare.args.hidden_size={args.hidden_size}",
        f"prepare.args.num_layers={args.num_layers}",
        "eval.path=null",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.rollout_batch_size={args.rollout_batch_size}",
        f"rollout.n_samples_per_prompt={args.n_samples_per_prompt}",
        f"trainer.micro_batch_size={args.rollout_batch_size * args.n_samples_per_prompt}",
        f"mode.max_staleness={args.max_staleness}",
        "buffer.appendonly=false",
        "trainer.save_interval=0",  # only the last step saves a checkpoint, and it is left out of the timings
        f"seed={args.seed}",
    ]


def run_mode(mode: str, args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    cfg = load_config(
        [
            *workload_overrides(args),
            f"mode={mode}",
            f"mode.num_steps={args.steps}",
            f"output_dir={out_dir}",
            f"name={mode}",
        ]
    )
    run_training(cfg)
    steps = [r for r in read_metrics(out_dir / mode / "metrics.jsonl") if r.get("perf/step_time_s") is not None]
    timed = steps[args.warmup : -1]

    def median(key: str) -> float:
        return statistics.median(r.get(key) or 0.0 for r in timed)

    return {
        "step_time_s": median("perf/step_time_s"),
        "rollout_time_s": median("perf/rollout_time_s"),
        "train_time_s": median("perf/train_time_s"),
        "train_compute_time_s": median("perf/train_compute_time_s"),
        "weight_sync_time_s": median("perf/weight_sync_time_s"),
        "trainer_idle_s": median("async/trainer_idle_s"),
        "staleness_max": max(r.get("async/staleness_max") or 0.0 for r in steps),
        "steps_timed": len(timed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--rollout-batch-size", type=int, default=8)
    parser.add_argument("--n-samples-per-prompt", type=int, default=8)
    parser.add_argument("--max-staleness", type=int, default=1, help="eta of fully_async")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the three modes (medians are reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_index in range(args.repeats):
        for mode in MODES:
            with tempfile.TemporaryDirectory(prefix=f"slime-rl-async-{round_index}-") as tmp:
                runs[mode].append(run_mode(mode, args, Path(tmp)))
    # Each figure is the median over the rounds, except the staleness bound check, which takes the worst round.
    results = {
        mode: {key: (max if key == "staleness_max" else statistics.median)(r[key] for r in values) for key in values[0]}
        for mode, values in runs.items()
    }
    sync = results["sync"]
    ideal = (sync["rollout_time_s"] + sync["train_time_s"]) / max(sync["rollout_time_s"], sync["train_time_s"])
    speedup_one_step = sync["step_time_s"] / results["one_step_async"]["step_time_s"]
    speedup_fully_async = sync["step_time_s"] / results["fully_async"]["step_time_s"]
    print(
        json.dumps(
            {
                "benchmark": "async_speedup",
                "speedup_one_step": round(speedup_one_step, 3),
                "speedup_fully_async": round(speedup_fully_async, 3),
                "ideal": round(ideal, 3),
                "fully_async_fraction_of_ideal": round(speedup_fully_async / ideal, 3),
                "one_step_fraction_of_ideal": round(speedup_one_step / ideal, 3),
                "modes": results,
                "runs": {
                    mode: [{k: round(v, 3) for k, v in r.items()} for r in values] for mode, values in runs.items()
                },
                "workload": vars(args),
                "placement": "disaggregated: engine 1 CPU (1 thread), trainer 1 CPU (1 thread)",
                "hardware": hardware_info(),
                "git_commit": git_commit(),
            }
        )
    )


if __name__ == "__main__":
    main()
