"""Rollout throughput with APRIL off and on, same engine, prompts and seeds; prints one JSON object.

Path measured: the real `RolloutManager` driving one native engine (continuous batching, one torch thread)
and the real embedded Redis buffer; no Ray. Each run is `--steps` consecutive rollout steps (weight version
= step, so recycled partials are resumed across versions); after every step the published groups are read
and acknowledged as a trainer would. Throughput counts trained (published) samples and their response
tokens over the wall time of all steps; work APRIL leaves in partials after the last step is not counted,
which favours APRIL's samples/s in short runs (the groups it leaves behind are the longest, so its trained
samples are shorter: compare `mean_response_tokens`) and understates its tokens/s. Hence three ratios:
`speedup` (trained samples/s), `speedup_tokens` (trained tokens/s) and `speedup_generated_tokens`, which
also counts the tokens in the partials left after the last step: every token generated during the run,
each counted once, the unbiased measure of rollout throughput. Runs are 15 steps by default.

Workload (per-prompt long tail): real long-tail rollouts are long because of the prompt (a hard problem gets
long answers from all its samples), not because of one unlucky sample per group. The toy model is taught
exactly that by a short SFT (`--sft-steps`): a prompt's second token is one of `NUM_LEVELS` difficulty
markers, and the training responses after marker k are random tokens ending in EOS with a constant
per-token hazard 1/m_k, m_k geometric from `MIN_MEAN_TOKENS` to `--max-new-tokens`. Benchmark prompts draw
their mean length from a lognormal (median `--median-tokens`, sigma `--length-sigma`) and carry the nearest
level's marker, so each sample's length is roughly geometric around its prompt's mean. The measured
distribution (from the APRIL-off runs, which publish groups in the order they were drawn) is reported:
p50/p90/p99 sample length and the share of length variance between prompts. Each sample gets a
per-request sampling seed derived from `rollout.seed` and its uid, identical in both modes.

Modes alternate (off, on, off, on, ...) for `--repeats` runs each; figures are medians and every
`speedup*` is on / off. Also reported: APRIL's off-policy token fraction (tokens of trained
samples generated under an older weight version) and its mean abort wait. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from slime_rl.buffer.server import EmbeddedRedis
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config import BufferConfig
from slime_rl.config.engine import EngineConfig
from slime_rl.config.rollout import RolloutConfig, groups_in_flight
from slime_rl.engines.client import EngineClient
from slime_rl.engines.server import EngineProcess
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.rollout.manager import RolloutManager
from slime_rl.toy.model import make_toy_model
from slime_rl.types import Group, Sample

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # the toy char tokenizer's special tokens
NUM_LEVELS = 16  # difficulty markers: tokens MARKER_BASE .. MARKER_BASE + NUM_LEVELS - 1
MARKER_BASE = 4
TEXT_TOKENS = (MARKER_BASE + NUM_LEVELS, 100)  # ids of ordinary prompt and response tokens (toy vocab is 100)
MIN_MEAN_TOKENS = 4.0  # mean response length of the easiest level


def level_means(max_new_tokens: int) -> list[float]:
    """Mean response length of each difficulty level (geometric spacing)."""
    ratio = (max_new_tokens / MIN_MEAN_TOKENS) ** (1 / (NUM_LEVELS - 1))
    return [MIN_MEAN_TOKENS * ratio**k for k in range(NUM_LEVELS)]


def sft_example(rng: random.Random, level: int, mean: float, max_tokens: int) -> tuple[list[int], int]:
    """One training sequence (prompt + response, + EOS if it ended within `max_tokens`) and its prompt length.

    A response cut at `max_tokens` without EOS still teaches the right hazard for the positions it has (it is
    a survival observation), which keeps the SFT short; longer positions rely on the model generalising.
    """
    prompt = prompt_ids(rng, level)
    length = 0
    while length < max_tokens and rng.random() > 1 / mean:
        length += 1
    end = [EOS_ID] if length < max_tokens else []
    return prompt + [rng.randrange(*TEXT_TOKENS) for _ in range(length)] + end, len(prompt)


def prompt_ids(rng: random.Random, level: int) -> list[int]:
    return [BOS_ID, MARKER_BASE + level] + [rng.randrange(*TEXT_TOKENS) for _ in range(rng.randint(6, 16))]


def per_prompt_length_model(path: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """Teach the toy model each level's EOS hazard by SFT on response tokens; returns (path, final loss)."""
    make_toy_model(path, seed=args.seed, max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_pretrained(path)
    means = level_means(args.max_new_tokens)
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.sft_lr)
    loss = torch.tensor(0.0)
    for _ in range(args.sft_steps):
        levels = [rng.randrange(NUM_LEVELS) for _ in range(args.sft_batch_size)]
        examples = [sft_example(rng, k, means[k], args.sft_max_response_tokens) for k in levels]
        width = max(len(ids) for ids, _ in examples)
        ids = torch.full((len(examples), width), PAD_ID)
        labels = torch.full((len(examples), width), -100)
        for i, (seq, num_prompt) in enumerate(examples):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, num_prompt : len(seq)] = torch.tensor(seq[num_prompt:])
        loss = model(input_ids=ids, attention_mask=(ids != PAD_ID).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(path, safe_serialization=True)
    return path, float(loss.detach())


def prompt_groups(num_groups: int, args: argparse.Namespace) -> list[Group]:
    """Prompts whose mean response length is lognormal, encoded by the nearest level's marker token."""
    rng = random.Random(args.seed + 1)
    log_means = [math.log(m) for m in level_means(args.max_new_tokens)]
    groups = []
    for g in range(num_groups):
        target = rng.gauss(math.log(args.median_tokens), args.length_sigma)
        level = min(range(NUM_LEVELS), key=lambda k: abs(log_means[k] - target))
        prompt = prompt_ids(rng, level)
        gid = f"p{g:05d}"
        samples = [
            Sample(uid=f"{gid}-{i}", group_id=gid, index=i, prompt_ids=prompt) for i in range(args.n_samples_per_prompt)
        ]
        groups.append(Group(group_id=gid, samples=samples))
    return groups


def length_stats(groups: list[list[int]]) -> dict[str, float]:
    """Sample-length percentiles and the between-prompt share of length variance (eta squared)."""
    lengths = np.array([n for g in groups for n in g], np.float64)
    if not len(lengths):
        return {}
    between = sum(len(g) * (np.mean(g) - lengths.mean()) ** 2 for g in groups if g)
    total = float(((lengths - lengths.mean()) ** 2).sum())
    return {
        "p50": float(np.percentile(lengths, 50)),
        "p90": float(np.percentile(lengths, 90)),
        "p99": float(np.percentile(lengths, 99)),
        "mean": float(lengths.mean()),
        "between_prompt_variance_share": between / max(total, 1e-9),
        "samples": float(len(lengths)),
    }


async def parity_reward(samples, responses) -> list[float]:
    return [float(len(s.response_ids) % 2) for s in samples]


async def run_mode(
    url: str, redis_url: str, cfg: RolloutConfig, args: argparse.Namespace
) -> tuple[dict[str, float], list[list[int]]]:
    """`args.steps` rollout steps with a fresh buffer; returns the run's figures and its published group lengths."""
    buffer = RedisBuffer.from_url(redis_url, f"april-bench-{uuid.uuid4().hex[:8]}")
    prompts = prompt_groups(args.steps * cfg.rollout_batch_size * 4, args)
    buffer.put_prompts(prompts)
    samples = tokens = stale = 0
    abort_wait_s = 0.0
    group_lengths: list[list[int]] = []
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
                groups = buffer.fetch_groups(batch.entry_ids)
                trained = [s for g in groups for s in g.samples]
                group_lengths += [[len(s.response_ids) for s in g.samples] for g in groups]
                samples += len(trained)
                tokens += sum(len(s.response_ids) for s in trained)
                stale += sum(e - b for s in trained for v, b, e in s.weight_spans if v < step)
                buffer.ack(batch)
            elapsed = time.perf_counter() - start
        unaccounted = buffer.snapshot()["unaccounted"]
        # Partials left after the last step hold generated but untrained tokens (APRIL only): the work done.
        leftover = buffer.take_groups(groups_in_flight(cfg))
        generated = tokens + sum(len(s.response_ids) for g in leftover for s in g.samples)
    finally:
        buffer.clear()
        buffer.close()
    figures = {
        "samples_per_s": samples / elapsed,
        "tokens_per_s": tokens / elapsed,
        "generated_tokens_per_s": generated / elapsed,
        "seconds": elapsed,
        "mean_response_tokens": tokens / max(samples, 1),
        "off_policy_token_frac": stale / max(tokens, 1),
        "abort_wait_s_per_step": abort_wait_s / args.steps,
        "unaccounted_groups": unaccounted,
    }
    return figures, group_lengths


def report_progress(message: str) -> None:
    """One line on stderr per finished phase: a long run (or one cut off by a time limit) shows how far it got."""
    print(f"[april] {message}", file=sys.stderr, flush=True)


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=15, help="consecutive rollout steps per run (few steps favour APRIL: see above)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (medians are reported)")
    parser.add_argument("--rollout-batch-size", type=int, default=8, help="groups per step")
    parser.add_argument("--n-samples-per-prompt", type=int, default=8)
    parser.add_argument("--over-sampling-batch-size", type=int, default=12, help="groups in flight with APRIL")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--median-tokens", type=float, default=24.0, help="median of the per-prompt mean length")
    parser.add_argument("--length-sigma", type=float, default=1.0, help="lognormal sigma of per-prompt mean length")
    parser.add_argument("--sft-steps", type=int, default=300, help="SFT steps teaching per-prompt EOS hazards")
    parser.add_argument("--sft-batch-size", type=int, default=32)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--sft-max-response-tokens", type=int, default=128, help="SFT responses are cut here")
    parser.add_argument("--max-running-requests", type=int, default=128, help="engine batch slots")
    parser.add_argument("--device", default="cpu", help="the engine's device: cpu or cuda (the SFT stays on CPU)")
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
    off_lengths: list[list[int]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(BufferConfig(appendonly=False)) as redis_address:
        sft_start = time.perf_counter()
        model_dir, sft_loss = per_prompt_length_model(Path(tmp) / "model", args)
        sft_s = time.perf_counter() - sft_start
        report_progress(f"SFT of the length model: {sft_s:.1f} s, final loss {sft_loss:.3f}")
        engine_cfg = EngineConfig(
            device=args.device,
            max_running_requests=args.max_running_requests,
            max_context_len=1024,
            num_threads=1,
            startup_timeout_s=300,
        )
        engine = EngineProcess(engine_cfg, str(model_dir), log_path=str(Path(tmp) / "engine.log"))
        try:
            url = engine.start()
            warmup = RolloutConfig(**{**vars(base), "rollout_batch_size": 1, "max_new_tokens": 8})
            asyncio.run(run_mode(url, redis_address.url, warmup, argparse.Namespace(**{**vars(args), "steps": 1})))
            for repeat in range(1, args.repeats + 1):
                figures, lengths = asyncio.run(run_mode(url, redis_address.url, base, args))
                runs["off"].append(figures)
                off_lengths += lengths
                runs["on"].append(asyncio.run(run_mode(url, redis_address.url, april, args))[0])
                for mode in ("off", "on"):
                    run = runs[mode][-1]
                    report_progress(
                        f"run {repeat}/{args.repeats} APRIL {mode}: {run['seconds']:.1f} s, "
                        f"{run['samples_per_s']:.1f} samples/s, {run['generated_tokens_per_s']:.0f} generated tokens/s"
                    )
        finally:
            engine.stop()
    keys = ("samples_per_s", "tokens_per_s", "generated_tokens_per_s", "mean_response_tokens")
    off = {key: median_of(runs["off"], key) for key in keys}
    on = {key: median_of(runs["on"], key) for key in keys}
    result = {
        "benchmark": "april",
        "speedup": round(on["samples_per_s"] / off["samples_per_s"], 3),
        "speedup_tokens": round(on["tokens_per_s"] / off["tokens_per_s"], 3),
        "speedup_generated_tokens": round(on["generated_tokens_per_s"] / off["generated_tokens_per_s"], 3),
        "off": {key: round(value, 2) for key, value in off.items()},
        "on": {key: round(value, 2) for key, value in on.items()},
        "on_off_policy_token_frac": round(median_of(runs["on"], "off_policy_token_frac"), 4),
        "on_abort_wait_s_per_step": round(median_of(runs["on"], "abort_wait_s_per_step"), 4),
        "unaccounted_groups": max(run["unaccounted_groups"] for mode in runs.values() for run in mode),
        "runs": {mode: [{k: round(v, 3) for k, v in run.items()} for run in values] for mode, values in runs.items()},
        "workload": {
            "description": (
                "per-prompt long tail: each prompt's mean response length is lognormal (median_tokens, "
                "length_sigma), encoded by a difficulty marker the toy model learned by SFT as a per-token EOS "
                "hazard; samples of one prompt are roughly geometric around its mean"
            ),
            "response_length": {k: round(v, 3) for k, v in length_stats(off_lengths).items()},
            "sft": {"steps": args.sft_steps, "final_loss": round(sft_loss, 4), "seconds": round(sft_s, 1)},
            "steps": args.steps,
            "rollout_batch_size": args.rollout_batch_size,
            "n_samples_per_prompt": args.n_samples_per_prompt,
            "over_sampling_batch_size": args.over_sampling_batch_size,
            "max_new_tokens": args.max_new_tokens,
            "median_tokens": args.median_tokens,
            "length_sigma": args.length_sigma,
            "engine_max_running_requests": args.max_running_requests,
            "engine_device": args.device,
            "seed": args.seed,
        },
        "repeats": args.repeats,
        "hardware": {**hardware_info(), "torch_threads": 1},
        "git_commit": git_commit(),
    }
    print(json.dumps(result))  # the benchmark's one output line


if __name__ == "__main__":
    main()
