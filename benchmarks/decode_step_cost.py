"""Native engine decode-step time against the number of rows in the batch; prints one JSON object.

Why it matters: a rollout step without APRIL ends with a long tail of steps that decode few rows. If a
step's time barely depends on its rows (a GPU, or any memory-bound LLM decode), each tail step costs
nearly as much as a full one and APRIL's over-provisioning fills that idle capacity; if it grows with the
rows (the toy model on a CPU), the tail is cheap and APRIL has less to win. `tail_step_cost` is the
one-row step time over the `--rows` maximum's: near 1 is the regime APRIL targets.

Path measured: `ModelRunner.prefill` then `ModelRunner.decode` on the toy model the APRIL benchmark uses, in
the engine's default dtype, one torch thread, every row at the same KV length (`--kv-len` plus the step; the
first steps of each size are not timed), greedy argmax and `.tolist()` after each step (the engine's host
sync). Sizes are measured in turn, `--repeats` rounds; figures are medians over the rounds' `--steps` steps
each. Baseline: the one-row step, in the same run; `ratio_vs_one_row` is each size's median over it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from slime_rl.engines.native.runner import ModelRunner, resolve_dtype
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.toy.model import make_toy_model

PROMPT_TOKEN, DECODE_TOKEN = 3, 5  # any ordinary toy-vocabulary ids
WARMUP_STEPS = 5  # untimed steps per size: the first steps at a new batch size are slower (allocator, kernels)


def step_times(runner: ModelRunner, rows: int, kv_len: int, steps: int) -> list[float]:
    """Seconds of each of `steps` timed decode steps over `rows` rows, after the warm-up steps from `kv_len`."""
    runner.prefill(0, [[PROMPT_TOKEN] * kv_len] * rows).float().argmax(-1).tolist()
    times = []
    for step in range(WARMUP_STEPS + steps):
        started = time.perf_counter()
        runner.decode([DECODE_TOKEN] * rows, [kv_len + step] * rows).float().argmax(-1).tolist()
        times.append(time.perf_counter() - started)
    return times[WARMUP_STEPS:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 32, 64, 96, 128])
    parser.add_argument("--kv-len", type=int, default=40, help="KV length of every row at the first step")
    parser.add_argument("--steps", type=int, default=60, help="timed decode steps per size and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all sizes (interleaved against drift)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if 1 not in args.rows:
        parser.error("--rows must include 1, the baseline")
    torch.set_num_threads(1)
    dtype = resolve_dtype("auto", args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_toy_model(Path(tmp) / "model", seed=0, max_position_embeddings=1024)
        max_len = args.kv_len + WARMUP_STEPS + args.steps
        runner = ModelRunner(str(model_dir), device=args.device, dtype=dtype, num_slots=max(args.rows), max_len=max_len)
        times: dict[int, list[float]] = {rows: [] for rows in args.rows}
        for _ in range(args.repeats):
            for rows in args.rows:
                times[rows] += step_times(runner, rows, args.kv_len, args.steps)
    step_ms = {rows: 1000 * statistics.median(values) for rows, values in times.items()}
    result = {
        "benchmark": "decode_step_cost",
        "step_ms": {str(rows): round(ms, 3) for rows, ms in step_ms.items()},
        "ratio_vs_one_row": {str(rows): round(ms / step_ms[1], 3) for rows, ms in step_ms.items()},
        "tail_step_cost": round(step_ms[1] / step_ms[max(args.rows)], 3),
        "device": args.device,
        "dtype": str(dtype).removeprefix("torch."),
        "kv_len": args.kv_len,
        "steps": args.steps,
        "repeats": args.repeats,
        "hardware": {**hardware_info(), "torch_threads": 1},
        "git_commit": git_commit(),
    }
    print(json.dumps(result))  # the benchmark's one output line


if __name__ == "__main__":
    main()
