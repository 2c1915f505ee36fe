"""Native engine throughput against static-batch `generate()` on a long-tail workload; prints one JSON object.

Workload: `--num-requests` prompts of random characters; most responses are short (8-32 tokens), a
`--long-fraction` of them are near `--max-new-tokens`. Lengths are enforced (ignore_eos / min_new_tokens)
so both sides produce exactly the same useful tokens. The static baseline runs `generate()` on batches of
`--batch-size` prompts, each batch running until its longest response is done (what static batching does
when a few samples are long); the engine (over HTTP, continuous batching, `--batch-size` slots) gets all
requests at once. Both run on `--device` (cpu or cuda) in the engine's default dtype, with one torch thread
and, on CUDA, with the cuDNN attention backend off as in the engine (`slime_rl.cuda_compat`).
Also reports the engine's median inter-token latency (streaming) at batch 1 and 32. Figures are medians
of `--repeats` runs; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from slime_rl.config.engine import EngineConfig
from slime_rl.cuda_compat import avoid_per_shape_attention_plans
from slime_rl.engines.client import EngineClient
from slime_rl.engines.native.runner import resolve_dtype
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from slime_rl.engines.server import EngineProcess
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.toy.model import make_toy_model


def workload(args: argparse.Namespace) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(args.seed)
    prompts = [[1] + [rng.randrange(4, 100) for _ in range(rng.randint(8, 24))] for _ in range(args.num_requests)]
    lengths = [
        rng.randint(int(0.8 * args.max_new_tokens), args.max_new_tokens)
        if rng.random() < args.long_fraction
        else rng.randint(8, 32)
        for _ in range(args.num_requests)
    ]
    return prompts, lengths


def static_run(model, prompts: list[list[int]], lengths: list[int], batch_size: int) -> float:
    """Seconds to generate every response with static left-padded batches."""
    started = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        batch, batch_lengths = prompts[start : start + batch_size], lengths[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
        longest = max(batch_lengths)
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=longest,
            min_new_tokens=longest,
            do_sample=False,
            pad_token_id=0,
        )
    return time.perf_counter() - started


async def engine_run(url: str, prompts: list[list[int]], lengths: list[int]) -> float:
    async with EngineClient(url) as client:
        requests = [
            GenerateRequest(
                input_ids=p, sampling_params=SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)
            )
            for p, n in zip(prompts, lengths, strict=True)
        ]
        started = time.perf_counter()
        outs = await asyncio.gather(*(client.generate(r) for r in requests))
        elapsed = time.perf_counter() - started
    if [o.completion_tokens for o in outs] != lengths:
        raise RuntimeError("engine produced different response lengths than requested")
    return elapsed


async def inter_token_latencies(url: str, prompt: list[int], batch: int, num_tokens: int) -> list[float]:
    """Gaps (s) between consecutive streamed chunks of `batch` concurrent requests."""

    async def one(client: EngineClient) -> list[float]:
        params = SamplingParams(max_new_tokens=num_tokens, temperature=0.0, ignore_eos=True)
        stamps = [
            time.perf_counter()
            async for _ in client.generate_stream(GenerateRequest(input_ids=prompt, sampling_params=params))
        ]
        return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    async with EngineClient(url) as client:
        gaps = await asyncio.gather(*(one(client) for _ in range(batch)))
    return [g for row in gaps for g in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--long-fraction", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both the engine and generate()")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    avoid_per_shape_attention_plans()  # else generate() pays cuDNN plan building that the engine does not
    prompts, lengths = workload(args)
    dtype = resolve_dtype("auto", args.device)  # what the engine uses by default
    useful_tokens = sum(lengths)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_toy_model(
            Path(tmp) / "model", hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=4, num_kv_heads=2,
            intermediate_size=4 * args.hidden_size, max_position_embeddings=1024,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
        static_run(model, prompts[:2], [4, 4], args.batch_size)  # warm-up
        static_s = [static_run(model, prompts, lengths, args.batch_size) for _ in range(args.repeats)]
        cfg = EngineConfig(
            device=args.device, max_running_requests=max(args.batch_size, 32), max_context_len=512, num_threads=1
        )
        engine = EngineProcess(cfg, str(model_dir))
        try:
            url = engine.start()
            asyncio.run(engine_run(url, prompts[:2], [4, 4]))  # warm-up
            engine_s = [asyncio.run(engine_run(url, prompts, lengths)) for _ in range(args.repeats)]
            itl = {b: [statistics.median(asyncio.run(inter_token_latencies(url, prompts[0], b, 64)))
                       for _ in range(args.repeats)] for b in (1, 32)}  # fmt: skip
        finally:
            engine.stop()
    engine_tps = useful_tokens / statistics.median(engine_s)
    static_tps = useful_tokens / statistics.median(static_s)
    result = {
        "benchmark": "engine_throughput",
        "engine_tokens_per_s": round(engine_tps, 1),
        "static_generate_tokens_per_s": round(static_tps, 1),
        "ratio_vs_static": round(engine_tps / static_tps, 3),
        "engine_itl_median_ms_batch1": round(1000 * statistics.median(itl[1]), 3),
        "engine_itl_median_ms_batch32": round(1000 * statistics.median(itl[32]), 3),
        "engine_seconds": [round(s, 3) for s in engine_s],
        "static_seconds": [round(s, 3) for s in static_s],
        "workload": {
            "num_requests": args.num_requests,
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "long_fraction": args.long_fraction,
            "useful_tokens": useful_tokens,
            "num_long": sum(n > 32 for n in lengths),
        },
        "model": {
            "arch": "llama",
            "device": args.device,
            "dtype": str(dtype).removeprefix("torch."),
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "params": sum(p.numel() for p in model.parameters()),
        },  # fmt: skip
        "repeats": args.repeats,
        "hardware": hardware_info(),
        "git_commit": git_commit(),
    }
    print(json.dumps(result))  # the benchmark's one output line


if __name__ == "__main__":
    main()
