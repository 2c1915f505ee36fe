"""Held-out evaluation: greedy decoding of a fixed prompt set through the router, scored by the reward.

Eval prompts never touch the buffer and are never trained on. Accuracy is the fraction of prompts
whose greedy response earns a reward of at least `success_threshold` (1.0 for the rule rewards).
Under `rollout.reward.kind=reliability` the eval also reports the outcome metrics of
`reliability_metrics` (`eval/answerable/*`, `eval/unanswerable/*`), read from the outcomes the reward
keeps on each sample.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import SamplingParams
from slime_rl.rollout.generate import generate_sample
from slime_rl.rollout.rewards.hub import RewardFn, score_samples
from slime_rl.rollout.rewards.reliability import outcome_of, reliability_metrics
from slime_rl.types import Sample


async def evaluate_greedy(
    client: EngineClient,
    samples: Sequence[Sample],
    *,
    reward_fn: RewardFn,
    decode: Callable[[np.ndarray], str],
    max_new_tokens: int,
    version: int,
    max_concurrency: int = 64,
    success_threshold: float = 1.0,
) -> dict[str, float]:
    """Generate greedily for every (fresh) sample, score it, and return `eval/*` metrics."""
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    semaphore = asyncio.Semaphore(max_concurrency)

    async def run(sample: Sample) -> None:
        async with semaphore:
            await generate_sample(client, sample, greedy, max_new_tokens, version)

    await asyncio.gather(*(run(s) for s in samples))
    failed = await score_samples(reward_fn, samples, [decode(s.response_ids) for s in samples])
    return eval_metrics(samples, num_failed=failed, success_threshold=success_threshold)


def eval_metrics(samples: Sequence[Sample], *, num_failed: int, success_threshold: float) -> dict[str, float]:
    """`eval/*` metrics of scored samples; reliability outcome metrics too where the reward recorded outcomes."""
    rewards = np.array([s.reward or 0.0 for s in samples])
    outcomes = [o for o in map(outcome_of, samples) if o is not None]
    return {
        "eval/accuracy": float(np.mean(rewards >= success_threshold)) if len(rewards) else 0.0,
        "eval/reward_mean": float(rewards.mean()) if len(rewards) else 0.0,
        "eval/response_len_mean": float(np.mean([len(s.response_ids) for s in samples])) if samples else 0.0,
        "eval/reward_failed": float(num_failed),
        **reliability_metrics(outcomes, prefix="eval"),
    }
