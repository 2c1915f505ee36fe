"""Simulated engine against the native engine it is calibrated from, on the same workload; prints one JSON object.

Two calibrations, both in the same run, both fitted by `calibrate` from decode_step_cost-shaped figures:
- `runner`: `benchmarks/decode_step_cost.py` itself (subprocess, the toy model it builds, one torch thread) at
  two KV lengths: the bare forward, without the engine's per-step sampling and scheduling.
- `engine` (the headline figures): the same row counts and KV lengths measured through the native engine over
  HTTP: `rows` concurrent requests of `8` and of `8 + steps` tokens; the step time is the difference over
  `steps` (per-request HTTP and prefill costs cancel; the simulated engine pays its own through the same app).
Both take the prefill cost from `ModelRunner.prefill` of 16-token prompts, one and `--prefill-batch` at a time:
the line through the two gives e (`prefill_base_ms`, the fixed cost of a forward) and d (`prefill_ms_per_token`).

Workload: `--num-requests` prompts of random toy-vocabulary ids (8-24 tokens); target lengths long-tailed (most
8-32 tokens, a `--long-fraction` near `--max-new-tokens`). The native engine (the same toy model, one torch
thread, `--slots` continuous-batching slots) generates them with ignore_eos at exactly those lengths; its
response lengths are written to a trace and the simulated engine (same slots and limits) replays them: it gets
the same prompts with `max_new_tokens` = the cap and stops at the recorded length. A plain client keeps
`concurrency` requests in flight (closed loop), one setting per `--concurrency` value, each run `--repeats`
times on both engines, alternating. Per setting: throughput (completion tokens over the makespan) and the
client-side p50/p99 request latency (medians over the repeats); `*_rel_error` = |simulated - native| / native,
the top-level ones the worst over settings for the `engine` calibration (`runner_calibration`: the same for the
other). Baseline: the native engine, measured in the same run. Nothing is asserted; the machine may be shared,
so the native figures (and the engine calibration) carry its noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import torch

from slime_rl.config.engine import EngineConfig, SimulatedEngineConfig
from slime_rl.engines.native.runner import ModelRunner, resolve_dtype
from slime_rl.engines.server import EngineProcess
from slime_rl.engines.simulated.cost import CostModel, calibrate
from slime_rl.engines.simulated.launcher import SimulatedEngines
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.toy.model import make_toy_model

BENCHMARKS = Path(__file__).resolve().parent
MAX_POSITIONS = 1024  # decode_step_cost.py's toy model; the engines serve an identical one


def decode_step_cost(kv_len: int, rows: list[int], steps: int) -> dict:
    argv = [sys.executable, str(BENCHMARKS / "decode_step_cost.py"), "--kv-len", str(kv_len), "--steps", str(steps)]
    out = subprocess.run([*argv, "--repeats", "2", "--rows", *map(str, rows)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"decode_step_cost.py failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def engine_step_cost(url: str, kv_len: int, rows: list[int], steps: int, repeats: int = 3) -> dict:
    """Decode step ms per row count through the engine at `url`, shaped like decode_step_cost.py's output."""
    short, prompt = 8, [3] * kv_len

    def body(tokens: int) -> dict:
        return {"input_ids": prompt, "sampling_params": {"max_new_tokens": tokens, "ignore_eos": True}}

    step_ms = {}
    for count in rows:
        diffs = []
        for _ in range(repeats):
            t_short = asyncio.run(closed_loop(url, [body(short)] * count, count))[0]
            t_long = asyncio.run(closed_loop(url, [body(short + steps)] * count, count))[0]
            diffs.append(1000 * (t_long - t_short) / steps)
        step_ms[str(count)] = round(statistics.median(diffs), 3)
    # calibrate() takes the mean context per row as kv_len + 5 + (steps - 1) / 2; here it is kv_len + short + steps / 2.
    return {"benchmark": "decode_step_cost", "source": "native engine over HTTP", "kv_len": kv_len + short - 5,
            "steps": steps + 1, "step_ms": step_ms}  # fmt: skip


def prefill_cost(model_dir: Path, batch: int, prompt_len: int, repeats: int = 7) -> dict[str, float]:
    """`prefill_base_ms` and `prefill_ms_per_token`: the line through prefill times of 1 and `batch` prompts."""
    runner = ModelRunner(
        str(model_dir), device="cpu", dtype=resolve_dtype("auto", "cpu"), num_slots=batch, max_len=prompt_len + 1
    )

    def ms(count: int) -> float:
        prompts = [[3] * prompt_len] * count
        runner.prefill(0, prompts).float().argmax(-1).tolist()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            runner.prefill(0, prompts).float().argmax(-1).tolist()
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    one, many = ms(1), ms(batch)
    per_token = max(0.0, (many - one) / ((batch - 1) * prompt_len))
    return {"prefill_ms_per_token": per_token, "prefill_base_ms": max(0.0, one - per_token * prompt_len)}


def workload(args: argparse.Namespace, vocab: int) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(4, vocab) for _ in range(rng.randint(8, 24))] for _ in range(args.num_requests)]
    lengths = [
        rng.randint(int(0.8 * args.max_new_tokens), args.max_new_tokens)
        if rng.random() < args.long_fraction
        else rng.randint(8, 32)
        for _ in range(args.num_requests)
    ]
    return prompts, lengths


async def closed_loop(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], list[int]]:
    """(makespan s, per-request latency s, completion tokens) with `concurrency` requests in flight."""
    queue = list(enumerate(bodies))
    latencies, tokens = [0.0] * len(bodies), [0] * len(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def worker() -> None:
            while queue:
                index, body = queue.pop(0)
                sent = time.perf_counter()
                async with session.post(f"{url}/generate", json=body) as response:
                    out = await response.json()
                latencies[index] = time.perf_counter() - sent
                tokens[index] = out["meta_info"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, tokens


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(runs: list[tuple[float, list[float], list[int]]]) -> dict[str, float]:
    return {
        "tokens_per_s": statistics.median(sum(tokens) / makespan for makespan, _, tokens in runs),
        "p50_latency_s": statistics.median(percentile(lat, 0.5) for _, lat, _ in runs),
        "p99_latency_s": statistics.median(percentile(lat, 0.99) for _, lat, _ in runs),
        "makespan_s": statistics.median(makespan for makespan, _, _ in runs),
    }


def rel_error(simulated: float, native: float) -> float:
    return abs(simulated - native) / native


def compare(runs: dict[str, list]) -> dict:
    """Per-engine figures of one setting and each simulated engine's relative errors against the native one."""
    native = figures(runs["native"])
    out: dict = {"native": {k: round(v, 4) for k, v in native.items()}}
    for name, engine_runs in runs.items():
        if name == "native":
            continue
        sim = figures(engine_runs)
        out[name] = {
            **{k: round(v, 4) for k, v in sim.items()},
            "throughput_rel_error": round(rel_error(sim["tokens_per_s"], native["tokens_per_s"]), 4),
            "p50_rel_error": round(rel_error(sim["p50_latency_s"], native["p50_latency_s"]), 4),
            "p99_rel_error": round(rel_error(sim["p99_latency_s"], native["p99_latency_s"]), 4),
        }
    return out


def sim_config(cost: CostModel, trace: Path) -> SimulatedEngineConfig:
    return SimulatedEngineConfig(
        decode_step_base_ms=1000 * cost.decode_base_s,
        decode_row_ms=1000 * cost.decode_row_s,
        decode_context_token_us=1e6 * cost.decode_context_token_s,
        prefill_token_us=1e6 * cost.prefill_token_s,
        prefill_base_ms=1000 * cost.prefill_base_s,
        length_trace_path=str(trace),
    )


def cost_ms(cost: CostModel) -> dict[str, float]:
    return {
        "a_decode_step": round(1000 * cost.decode_base_s, 4),
        "b_per_row": round(1000 * cost.decode_row_s, 5),
        "c_per_context_token": round(1000 * cost.decode_context_token_s, 7),
        "d_per_prefill_token": round(1000 * cost.prefill_token_s, 5),
        "e_per_prefill_step": round(1000 * cost.prefill_base_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=96)
    parser.add_argument("--slots", type=int, default=32, help="max_running_requests of both engines")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--long-fraction", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 96])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kv-lens", type=int, nargs="+", default=[16, 128], help="decode_step_cost.py --kv-len runs")
    parser.add_argument("--calibration-rows", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--calibration-steps", type=int, default=40)
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_toy_model(Path(tmp) / "model", seed=0, max_position_embeddings=MAX_POSITIONS)
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        prefill = prefill_cost(model_dir, args.prefill_batch, 16)
        runner_steps = [decode_step_cost(kv, args.calibration_rows, args.calibration_steps) for kv in args.kv_lens]
        prompts, lengths = workload(args, vocab)
        native_bodies = [
            {"input_ids": p, "sampling_params": {"max_new_tokens": n, "ignore_eos": True, "temperature": 1.0}}
            for p, n in zip(prompts, lengths, strict=True)
        ]
        trace = Path(tmp) / "lengths.jsonl"
        trace.write_text(
            "".join(
                json.dumps({"input_ids": p, "response_lengths": [n]}) + "\n"
                for p, n in zip(prompts, lengths, strict=True)
            )
        )
        sim_bodies = [
            {"input_ids": p, "sampling_params": {"max_new_tokens": args.max_new_tokens, "temperature": 1.0}}
            for p in prompts
        ]
        limits = {"max_running_requests": args.slots, "max_context_len": MAX_POSITIONS, "num_threads": 1}
        native = EngineProcess(EngineConfig(kind="native", startup_timeout_s=300, **limits), str(model_dir))
        settings: dict[str, dict] = {}
        try:
            native_url = native.start()
            asyncio.run(closed_loop(native_url, native_bodies[:4], 4))  # warm-up
            engine_steps = [
                engine_step_cost(native_url, kv, args.calibration_rows, args.calibration_steps) for kv in args.kv_lens
            ]
            costs = {}
            for name, steps in (("engine", engine_steps), ("runner", runner_steps)):
                steps[0].update(prefill)
                costs[name] = calibrate(steps)
            with contextlib.ExitStack() as stack:
                sim_urls = {name: stack.enter_context(SimulatedEngines(
                    EngineConfig(kind="simulated", simulated=sim_config(cost, trace), **limits), 1,
                    model_path=str(model_dir),
                ))[0] for name, cost in costs.items()}  # fmt: skip
                for concurrency in args.concurrency:
                    runs: dict[str, list] = {"native": [], **{name: [] for name in costs}}
                    for _ in range(args.repeats):
                        runs["native"].append(asyncio.run(closed_loop(native_url, native_bodies, concurrency)))
                        for name, url in sim_urls.items():
                            runs[name].append(asyncio.run(closed_loop(url, sim_bodies, concurrency)))
                    if any(run[2] != lengths for engine_runs in runs.values() for run in engine_runs):
                        raise RuntimeError("an engine produced other response lengths than the workload's")
                    settings[f"concurrency_{concurrency}"] = compare(runs)
        finally:
            native.stop()
    worst = {
        name: {
            key: max(setting[name][key] for setting in settings.values())
            for key in ("throughput_rel_error", "p50_rel_error", "p99_rel_error")
        }
        for name in costs
    }
    result = {
        "benchmark": "simulator_fidelity",
        **worst["engine"],
        "runner_calibration": worst["runner"],
        "settings": settings,
        "cost_model_ms": {name: cost_ms(cost) for name, cost in costs.items()},
        "calibration_step_ms": {
            "engine": [{"kv_len": r["kv_len"], "step_ms": r["step_ms"]} for r in engine_steps],
            "runner": [{"kv_len": r["kv_len"], "step_ms": r["step_ms"]} for r in runner_steps],
        },
        "workload": {
            "num_requests": args.num_requests,
            "slots": args.slots,
            "max_new_tokens": args.max_new_tokens,
            "long_fraction": args.long_fraction,
            "completion_tokens": sum(lengths),
        },
        "repeats": args.repeats,
        "hardware": {**hardware_info(), "torch_threads": 1},
        "git_commit": git_commit(),
    }
    print(json.dumps(result))  # the benchmark's one output line


if __name__ == "__main__":
    main()
