"""Rollout throughput with APRIL off and on, same engine, prompts and seeds; prints one JSON object.

Path measured: the real `RolloutManager` driving one native engine (continuous batching, one torch thread)
and the real embedded Redis buffer; no Ray. Each run is `--steps` consecutive rollout steps (weight version
= step, so recycled partials are resumed across versions); after every step the published groups are read
and acknowledged as a trainer would. Throughput counts trained (published) samples and their response
tokens over the wall time of all steps; work APRIL leaves in partials after the last step is not counted.

Workload: a random-init toy Llama stops at EOS with a small per-token probability, so response lengths are
roughly geometric with a long tail up to `--max-new-tokens`. `--eos-scale` multiplies the EOS row of
`lm_head` in a copy of the model: larger values raise the EOS logit's spread and shorten the typical
response (measured on this toy at 256 max tokens: scale 1 gives median ~80 / p90 256 tokens, scale 4
median ~64 / p90 ~190, scale 8 median ~42 / p90 ~110). Each sample gets a per-request sampling seed
derived from `rollout.seed` and its uid, identical in both modes.

Modes alternate (off, on, off, on, ...) for `--repeats` runs each; figures are medians. `speedup` is
on / off for samples/s and tokens/s. Also reported: APRIL's off-policy token fraction (tokens of trained
samples generated under an older weight version) and its mean abort wait. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from slime_rl.buffer.server import EmbeddedRedis
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config import BufferConfig
from slime_rl.config.engine import EngineConfig
from slime_rl.config.rollout import RolloutConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.server import EngineProcess
from slime_rl.rollout.manager import RolloutManager
from slime_rl.toy.model import make_toy_model
from slime_rl.types import Group, Sample


def long_tail_model(path: Path, eos_scale: float) -> Path:
    """The toy model with its EOS row of `lm_head` scaled by `eos_scale` (see the module docstring)."""
    make_toy_model(path, seed=0, max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id] *= eos_scale
    model.save_pretrained(path, safe_serialization=True)
    return path


def prompt_groups(num_groups: int, group_size: int, seed: int) -> list[Group]:
    rng = random.Random(seed)
    groups = []
    for g in range(num_groups):
        prompt = [1] + [rng.randrange(4, 60) for _ in range(rng.randint(6, 16))]
        gid = f"p{g:05d}"
        samples = [Sample(uid=f"{gid}-{i}", group_id=gid, index=i, prompt_ids=prompt) for i in range(group_size)]
        groups.append(Group(group_id=gid, samples=samples))
    return groups


async def parity_reward(samples, responses) -> list[float]:
    return [float(len(s.response_ids) % 2) for s in samples]


async def run_mode(url: str, redis_url: str, cfg: RolloutConfig, args: argparse.Namespace) -> dict[str, float]:
    """`args.steps` rollout steps with a fresh buffer; returns throughput and APRIL figures of the run."""
    buffer = RedisBuffer.from_url(redis_url, f"april-bench-{uuid.uuid4().hex[:8]}")
    prompts = prompt_groups(args.steps * cfg.rollout_batch_size * 4, cfg.n_samples_per_prompt, args.seed)
    buffer.put_prompts(prompts)
    samples = tokens = stale = 0
    abort_wait_s = 0.0
    try:
        async with EngineClient(url, timeout_s=600) as client:
            manager = RolloutManager(
                cfg,
                router=client,
                engines=[client],
                buffer=buffer,
                refill_prompts=lambda n: None,
                reward_fn=parity_reward,
                decode=lambda ids: "",
            )
            start = time.perf_counter()
            for step in range(args.steps):
                await client.update_weight_version(str(step))
                metrics = await manager.generate(step)
                abort_wait_s += metrics["rollout/abort_wait_s"]
                batch = buffer.read_batch("trainer-0", cfg.rollout_batch_size, block_ms=0, trainer_version=step)
                trained = [s for g in batch.groups for s in g.samples]
                samples += len(trained)
                tokens += sum(len(s.response_ids) for s in trained)
                stale += sum(e - b for s in trained for v, b, e in s.weight_spans if v < step)
                buffer.ack(batch)
            elapsed = time.perf_counter() - start
        unaccounted = buffer.snapshot()["unaccounted"]
    finally:
        buffer.clear()
        buffer.close()
    return {
        "samples_per_s": samples / elapsed,
        "tokens_per_s": tokens / elapsed,
        "seconds": elapsed,
        "mean_response_tokens": tokens / max(samples, 1),
        "off_policy_token_frac": stale / max(tokens, 1),
        "abort_wait_s_per_step": abort_wait_s / args.steps,
        "unaccounted_groups": unaccounted,
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "num_cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": 1}


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="consecutive rollout steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (medians are reported)")
    parser.add_argument("--rollout-batch-size", type=int, default=8, help="groups per step")
    parser.add_argument("--n-samples-per-prompt", type=int, default=8)
    parser.add_argument("--over-sampling-batch-size", type=int, default=16, help="groups in flight with APRIL")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--eos-scale", type=float, default=4.0, help="EOS row scale of lm_head (tail weight)")
    parser.add_argument("--max-running-requests", type=int, default=128, help="engine batch slots")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = RolloutConfig(
        rollout_batch_size=args.rollout_batch_size,
        n_samples_per_prompt=args.n_samples_per_prompt,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    april = RolloutConfig(
        **{**vars(base), "use_april": True, "over_sampling_batch_size": args.over_sampling_batch_size}
    )
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(BufferConfig(appendonly=False)) as redis_address:
        model_dir = long_tail_model(Path(tmp) / "model", args.eos_scale)
        engine_cfg = EngineConfig(
            max_running_requests=args.max_running_requests, max_context_len=1024, num_threads=1, startup_timeout_s=300
        )
        engine = EngineProcess(engine_cfg, str(model_dir), log_path=str(Path(tmp) / "engine.log"))
        try:
            url = engine.start()
            warmup = RolloutConfig(**{**vars(base), "rollout_batch_size": 1, "max_new_tokens": 8})
            asyncio.run(run_mode(url, redis_address.url, warmup, argparse.Namespace(**{**vars(args), "steps": 1})))
            for _ in range(args.repeats):
                runs["off"].append(asyncio.run(run_mode(url, redis_address.url, base, args)))
                runs["on"].append(asyncio.run(run_mode(url, redis_address.url, april, args)))
        finally:
            engine.stop()
    off = {key: median_of(runs["off"], key) for key in ("samples_per_s", "tokens_per_s", "mean_response_tokens")}
    on = {key: median_of(runs["on"], key) for key in ("samples_per_s", "tokens_per_s", "mean_response_tokens")}
    result = {
        "benchmark": "april",
        "speedup": round(on["samples_per_s"] / off["samples_per_s"], 3),
        "speedup_tokens": round(on["tokens_per_s"] / off["tokens_per_s"], 3),
        "off": {key: round(value, 2) for key, value in off.items()},
        "on": {key: round(value, 2) for key, value in on.items()},
        "on_off_policy_token_frac": round(median_of(runs["on"], "off_policy_token_frac"), 4),
        "on_abort_wait_s_per_step": round(median_of(runs["on"], "abort_wait_s_per_step"), 4),
        "unaccounted_groups": max(run["unaccounted_groups"] for mode in runs.values() for run in mode),
        "runs": {mode: [{k: round(v, 3) for k, v in run.items()} for run in values] for mode, values in runs.items()},
        "workload": {
            "steps": args.steps,
            "rollout_batch_size": args.rollout_batch_size,
            "n_samples_per_prompt": args.n_samples_per_prompt,
            "over_sampling_batch_size": args.over_sampling_batch_size,
            "max_new_tokens": args.max_new_tokens,
            "eos_scale": args.eos_scale,
            "engine_max_running_requests": args.max_running_requests,
            "seed": args.seed,
        },
        "repeats": args.repeats,
        "hardware": hardware(),
        "git_commit": git_commit(),
    }
    print(json.dumps(result))  # the benchmark's one output line


if __name__ == "__main__":
    main()
