"""Simulated engine against the native engine it is calibrated from, on the same workloads; prints one JSON object.

Calibration (all measured in the same run, on the native engine the simulator is compared with):
- a, b, c (decode step): the native engine over HTTP, `rows` concurrent requests of `8` and of `8 + steps` tokens
  at two prompt lengths; the step time is the difference over `steps` (per-request costs cancel), fitted by
  `calibrate`.
- d, e (one prefill forward, padded tokens, with the sampling of its first tokens): `ModelRunner.prefill` plus the
  native sampler over 16-token prompts, one and `--prefill-batch` at a time: the line through the two. The
  simulated scheduler splits each step's prefill into forwards as the native scheduler does.
- f (`request_ms`, each request that ends: the native engine's releasing, detokenising and answering on the same
  CPU): the short runs of the decode calibration minus what a..e predict for them, fitted as g + f·rows over the
  row counts (g, the per-run latency, is not modelled: both engines pay their own).
The simulated engine gets them through a calibration file (`engine.simulated.calibration_path`).

Settings, each run `--repeats` times per engine: all settings on the native engine, then on the simulated one,
and so on (the first native sweep gives the trace below):
- `concurrency_N`: `--num-requests` prompts of random toy-vocabulary ids (8-24 tokens), target lengths long-tailed
  (most 8-32 tokens, a `--long-fraction` near `--max-new-tokens`); both engines generate them with ignore_eos at
  exactly those lengths; a plain client keeps N requests in flight (closed loop). Throughput: completion tokens over
  the makespan; latency: per request, client side.
- `april_off`, `april_on`: `RolloutManager` over the engine (benchmarks/april.py `run_mode`: `--april-steps` steps of
  `--april-batch` groups of `--april-samples`, APRIL's over-sampling `--april-over-sampling` groups, rollout seed
  fixed, the toy model's own EOS). Throughput: trained samples per second; latency: per `/generate` request
  (aborted and resumed requests included), client side.
In the APRIL settings the simulated engine replays the native engine's per-prompt response lengths from a trace
(`length_trace_path`): the length of each sample's first request that the native engine did not abort (resumed
requests continue their plan; samples never finished natively draw from a lognormal fitted to those lengths).
Per setting: medians over the repeats; `*_rel_error` = |simulated - native| / native, the top-level ones the worst
over all settings. Nothing is asserted; the native figures (and the calibration) carry the machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import april  # benchmarks/april.py: its rollout driver (run_mode) and prompts
import numpy as np
import torch

from slime_rl.buffer.server import EmbeddedRedis
from slime_rl.config import BufferConfig
from slime_rl.config.engine import EngineConfig, SimulatedEngineConfig
from slime_rl.config.rollout import RolloutConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.native.runner import ModelRunner, resolve_dtype
from slime_rl.engines.native.sampling import make_row_sampling, sample
from slime_rl.engines.server import EngineProcess
from slime_rl.engines.simulated.cost import CostModel, calibrate
from slime_rl.engines.simulated.scheduler import prefill_chunks
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.toy.model import make_toy_model

MAX_POSITIONS = 1024  # the toy model's positions (both engines serve it)
SHORT = 8  # tokens of the short calibration requests
MAX_PREFILL_TOKENS = EngineConfig().max_prefill_tokens  # both engines run with the default
ERROR_KEYS = ("throughput_rel_error", "p50_rel_error", "p99_rel_error")


def engine_step_cost(url: str, kv_len: int, rows: list[int], steps: int, repeats: int = 3) -> dict:
    """Decode step ms per row count through the engine at `url`, shaped like decode_step_cost.py's output.

    Also keeps `short_s`: the median seconds of the `SHORT`-token runs per row count (request_cost fits f to them).
    """
    prompt = [3] * kv_len

    def body(tokens: int) -> dict:
        return {"input_ids": prompt, "sampling_params": {"max_new_tokens": tokens, "ignore_eos": True}}

    step_ms, short_s = {}, {}
    for count in rows:
        diffs, shorts = [], []
        for _ in range(repeats):
            t_short = asyncio.run(closed_loop(url, [body(SHORT)] * count, count))[0]
            t_long = asyncio.run(closed_loop(url, [body(SHORT + steps)] * count, count))[0]
            diffs.append(1000 * (t_long - t_short) / steps)
            shorts.append(t_short)
        step_ms[str(count)] = round(statistics.median(diffs), 3)
        short_s[str(count)] = statistics.median(shorts)
    # calibrate() takes the mean context per row as kv_len + 5 + (steps - 1) / 2; here it is kv_len + SHORT + steps / 2.
    return {"benchmark": "decode_step_cost", "source": "native engine over HTTP", "kv_len": kv_len + SHORT - 5,
            "steps": steps + 1, "step_ms": step_ms, "prompt_len": kv_len, "short_s": short_s}  # fmt: skip


def prefill_cost(model_dir: Path, batch: int, prompt_len: int, repeats: int = 7) -> dict[str, float]:
    """`prefill_base_ms` and `prefill_ms_per_token` of one forward and its first-token sampling, as the native
    scheduler runs them: the line through the times of 1 and `batch` prompts."""
    runner = ModelRunner(
        str(model_dir), device="cpu", dtype=resolve_dtype("auto", "cpu"), num_slots=batch, max_len=prompt_len + 1
    )
    generator = torch.Generator().manual_seed(0)

    def once(count: int) -> None:
        logits = runner.prefill(0, [[3] * prompt_len] * count)
        rows = make_row_sampling([1.0] * count, [1.0] * count, [-1] * count, [None] * count, [0] * count, "cpu")
        sample(logits, rows, generator)[0].tolist()

    def ms(count: int) -> float:
        once(count)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            once(count)
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    one, many = ms(1), ms(batch)
    per_token = max(0.0, (many - one) / ((batch - 1) * prompt_len))
    return {"prefill_ms_per_token": per_token, "prefill_base_ms": max(0.0, one - per_token * prompt_len)}


def modelled_short_s(cost: CostModel, count: int, prompt_len: int) -> float:
    """The modelled engine time of `count` concurrent SHORT-token requests of `prompt_len` tokens, without f."""
    chunks = prefill_chunks([prompt_len] * count, MAX_PREFILL_TOKENS)
    prefill = sum(cost.prefill_s(len(chunk) * prompt_len) for chunk in chunks)
    # Step 1 prefills and decodes (2 tokens per request), steps 2.. add one each; contexts as the simulator counts.
    contexts = [prompt_len] + [prompt_len + k for k in range(2, SHORT)]
    return prefill + sum(cost.decode_s(count, count * context) for context in contexts)


def request_cost(cost: CostModel, results: list[dict]) -> dict[str, float]:
    """f and g: the measured short runs minus their modelled time, fitted as g + f·rows (least squares, f >= 0)."""
    points = [
        (int(rows), seconds - modelled_short_s(cost, int(rows), result["prompt_len"]))
        for result in results
        for rows, seconds in result["short_s"].items()
    ]
    rows = np.array([p[0] for p in points], dtype=float)
    residual = np.array([p[1] for p in points], dtype=float)
    (g, f), *_ = np.linalg.lstsq(np.stack([np.ones_like(rows), rows], axis=1), residual, rcond=None)
    if f < 0:
        f, g = 0.0, float(residual.mean())
    return {"request_ms": 1000 * float(f), "per_run_latency_ms": 1000 * float(g)}


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


class RecordingClient(EngineClient):
    """An EngineClient that records every `generate` call (its `lifecycles` tuples) in `RecordingClient.records`."""

    records: list[tuple] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lifecycles = RecordingClient.records


april.EngineClient = RecordingClient  # run_mode opens its client by this name: record its requests


def rollout_run(url: str, redis_url: str, cfg: RolloutConfig, args: argparse.Namespace) -> dict:
    """One april.run_mode run: its figures and its requests (rid, prompt tokens, output tokens, finish, latency s)."""
    RecordingClient.records = []
    figures, _ = asyncio.run(april.run_mode(url, redis_url, cfg, args))
    requests = [(r[0], r[3], r[4], r[5], r[2] - r[1]) for r in RecordingClient.records]
    return {"figures": figures, "requests": requests}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(runs: list[tuple[float, list[float]]]) -> dict[str, float]:
    """Medians over runs of (throughput, request latencies)."""
    return {
        "throughput": statistics.median(throughput for throughput, _ in runs),
        "p50_latency_s": statistics.median(percentile(lat, 0.5) for _, lat in runs),
        "p99_latency_s": statistics.median(percentile(lat, 0.99) for _, lat in runs),
    }


def rel_error(simulated: float, native: float) -> float:
    return abs(simulated - native) / native


def compare(native_runs: list, sim_runs: list, unit: str) -> dict:
    native, sim = figures(native_runs), figures(sim_runs)
    return {
        "throughput_unit": unit,
        "native": {k: round(v, 4) for k, v in native.items()},
        "simulated": {k: round(v, 4) for k, v in sim.items()},
        "throughput_rel_error": round(rel_error(sim["throughput"], native["throughput"]), 4),
        "p50_rel_error": round(rel_error(sim["p50_latency_s"], native["p50_latency_s"]), 4),
        "p99_rel_error": round(rel_error(sim["p99_latency_s"], native["p99_latency_s"]), 4),
    }


def april_trace(runs: list[dict], prompts: dict[str, list[int]]) -> dict[str, list[int]]:
    """Per sample uid, the native length of its first request from the prompt alone that was not aborted."""
    lengths: dict[str, int] = {}
    for run in runs:
        for rid, prompt_tokens, out, finish, _ in run["requests"]:
            if finish != "abort" and rid in prompts and prompt_tokens == len(prompts[rid]):
                lengths.setdefault(rid, out)
    return lengths


def cost_ms(cost: CostModel) -> dict[str, float]:
    return {
        "a_decode_step": round(1000 * cost.decode_base_s, 4),
        "b_per_row": round(1000 * cost.decode_row_s, 5),
        "c_per_context_token": round(1000 * cost.decode_context_token_s, 7),
        "d_per_prefill_token": round(1000 * cost.prefill_token_s, 5),
        "e_per_prefill_forward": round(1000 * cost.prefill_base_s, 4),
        "f_per_request": round(1000 * cost.request_s, 4),
    }


def run_settings(url: str, redis_url: str, args: argparse.Namespace, work: dict, into: dict[str, list]) -> None:
    """Every setting once on the engine at `url`, appended to `into`: (throughput, latencies) per run, raw runs."""
    out: dict[str, list] = {}
    for concurrency in args.concurrency:
        makespan, latencies, tokens = asyncio.run(closed_loop(url, work["bodies"], concurrency))
        if tokens != work["lengths"]:
            raise RuntimeError("an engine produced other response lengths than the workload's")
        out[f"concurrency_{concurrency}"] = [(sum(tokens) / makespan, latencies)]
    for mode, cfg in work["rollout"].items():
        raw = [rollout_run(url, redis_url, cfg, work["april_args"])]
        out[f"april_{mode}"] = [(run["figures"]["samples_per_s"], [r[4] for r in run["requests"]]) for run in raw]
        out[f"april_{mode}_raw"] = raw
    for name, runs in out.items():
        into.setdefault(name, []).extend(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=96)
    parser.add_argument("--slots", type=int, default=32, help="max_running_requests of both engines")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--long-fraction", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 96])
    parser.add_argument("--april-steps", type=int, default=4, help="rollout steps per APRIL-setting run")
    parser.add_argument("--april-batch", type=int, default=4, help="groups per rollout step")
    parser.add_argument("--april-samples", type=int, default=8, help="samples per group")
    parser.add_argument("--april-over-sampling", type=int, default=8, help="groups in flight with APRIL on")
    parser.add_argument("--april-max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-lens", type=int, nargs="+", default=[16, 128], help="prompt lengths of the calibration")
    parser.add_argument("--calibration-rows", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--calibration-steps", type=int, default=40)
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = RolloutConfig(
        rollout_batch_size=args.april_batch,
        n_samples_per_prompt=args.april_samples,
        max_new_tokens=args.april_max_new_tokens,
        seed=args.seed,
    )
    on = RolloutConfig(**{**vars(base), "use_april": True, "over_sampling_batch_size": args.april_over_sampling})
    april_args = argparse.Namespace(
        steps=args.april_steps,
        n_samples_per_prompt=args.april_samples,
        max_new_tokens=args.april_max_new_tokens,
        median_tokens=24.0,  # prompt_groups picks a difficulty marker from it; the toy model here ignores it
        length_sigma=1.0,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(BufferConfig(appendonly=False)) as redis_address:
        model_dir = make_toy_model(Path(tmp) / "model", seed=0, max_position_embeddings=MAX_POSITIONS)
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        prefill = prefill_cost(model_dir, args.prefill_batch, 16)
        prompts, lengths = workload(args, vocab)
        work = {
            "bodies": [
                {"input_ids": p, "sampling_params": {"max_new_tokens": n, "ignore_eos": True, "temperature": 1.0}}
                for p, n in zip(prompts, lengths, strict=True)
            ],
            "lengths": lengths,
            "rollout": {"off": base, "on": on},
            "april_args": april_args,
        }
        limits = {"max_running_requests": args.slots, "max_context_len": MAX_POSITIONS, "num_threads": 1}
        native = EngineProcess(EngineConfig(kind="native", startup_timeout_s=300, **limits), str(model_dir))
        try:
            native_url = native.start()
            asyncio.run(closed_loop(native_url, work["bodies"][:4], 4))  # warm-up
            steps = [
                engine_step_cost(native_url, kv, args.calibration_rows, args.calibration_steps) for kv in args.kv_lens
            ]
            steps[0].update(prefill)
            request = request_cost(calibrate(steps), steps)
            steps[0]["request_ms"] = request["request_ms"]
            native_runs: dict[str, list] = {}
            run_settings(native_url, redis_address.url, args, work, native_runs)  # the first repeat gives the trace
            cost = calibrate(steps)
            calibration = Path(tmp) / "calibration.json"
            calibration.write_text(json.dumps(steps))

            # Simulated lengths: each APRIL sample's native length, per prompt (closed-loop requests carry theirs).
            groups = april.prompt_groups(args.april_steps * args.april_batch * 4, april_args)
            sample_prompts = {s.uid: list(map(int, s.prompt_ids)) for g in groups for s in g.samples}
            native_lengths = april_trace(native_runs["april_off_raw"] + native_runs["april_on_raw"], sample_prompts)
            trace = Path(tmp) / "lengths.jsonl"
            with trace.open("w") as out:
                for g in groups:
                    known = [native_lengths[s.uid] for s in g.samples if s.uid in native_lengths]
                    if known:
                        out.write(
                            json.dumps({"input_ids": sample_prompts[g.samples[0].uid], "response_lengths": known})
                        )
                        out.write("\n")
            logs = [math.log(n) for n in native_lengths.values()] or [math.log(args.april_max_new_tokens)]
            sim_cfg = SimulatedEngineConfig(
                calibration_path=str(calibration),
                length_trace_path=str(trace),
                length_median=math.exp(statistics.median(logs)),
                length_sigma=statistics.pstdev(logs),
            )
            simulated = EngineProcess(
                EngineConfig(kind="simulated", simulated=sim_cfg, startup_timeout_s=60, **limits), str(model_dir)
            )
            try:
                sim_url = simulated.start()
                # The decode calibration repeated on the simulated engine: does it give back a, b and f?
                probe = [
                    engine_step_cost(sim_url, kv, args.calibration_rows, args.calibration_steps, 1)
                    for kv in args.kv_lens
                ]
                probe[0].update(prefill)
                probe_cost = calibrate(probe)
                probe_request = request_cost(probe_cost, probe)
                sim_runs: dict[str, list] = {}
                run_settings(sim_url, redis_address.url, args, work, sim_runs)
                for _ in range(args.repeats - 1):  # alternate, so that both engines see the machine's same moods
                    run_settings(native_url, redis_address.url, args, work, native_runs)
                    run_settings(sim_url, redis_address.url, args, work, sim_runs)
            finally:
                simulated.stop()
        finally:
            native.stop()
    settings = {
        name: compare(native_runs[name], sim_runs[name], "samples/s" if name.startswith("april") else "tokens/s")
        for name in native_runs
        if not name.endswith("_raw")
    }
    for name in ("april_off", "april_on"):
        for engine, runs in (("native", native_runs), ("simulated", sim_runs)):
            raw = runs[f"{name}_raw"]
            settings[name][engine]["generated_tokens_per_s"] = round(
                statistics.median(r["figures"]["generated_tokens_per_s"] for r in raw), 2
            )
            settings[name][engine]["requests_per_run"] = statistics.median(len(r["requests"]) for r in raw)
            settings[name][engine]["aborted_per_run"] = statistics.median(
                sum(q[3] == "abort" for q in r["requests"]) for r in raw
            )
    result = {
        "benchmark": "simulator_fidelity",
        **{key: max(setting[key] for setting in settings.values()) for key in ERROR_KEYS},
        "worst_setting": {key: max(settings, key=lambda name: settings[name][key]) for key in ERROR_KEYS},
        "settings": settings,
        "cost_model_ms": cost_ms(cost),
        "calibration": {
            "decode_step_ms": [{"prompt_len": r["prompt_len"], "step_ms": r["step_ms"]} for r in steps],
            "short_run_s": [
                {"prompt_len": r["prompt_len"], "short_s": {k: round(v, 4) for k, v in r["short_s"].items()}}
                for r in steps
            ],
            "per_run_latency_ms (g, not modelled)": round(request["per_run_latency_ms"], 3),
            "simulated_probe": {
                **cost_ms(dataclasses.replace(probe_cost, request_s=probe_request["request_ms"] / 1000)),
                "per_run_latency_ms": round(probe_request["per_run_latency_ms"], 3),
                "decode_step_ms": [{"prompt_len": r["prompt_len"], "step_ms": r["step_ms"]} for r in probe],
            },
            "april_traced_samples": len(native_lengths),
        },
        "workload": {
            "num_requests": args.num_requests,
            "slots": args.slots,
            "max_new_tokens": args.max_new_tokens,
            "long_fraction": args.long_fraction,
            "completion_tokens": sum(lengths),
            "april": {
                "steps": args.april_steps,
                "batch": args.april_batch,
                "samples": args.april_samples,
                "over_sampling": args.april_over_sampling,
                "max_new_tokens": args.april_max_new_tokens,
            },
        },
        "repeats": args.repeats,
        "hardware": {**hardware_info(), "torch_threads": 1},
        "git_commit": git_commit(),
    }
    print(json.dumps(result))  # the benchmark's one output line


if __name__ == "__main__":
    main()
