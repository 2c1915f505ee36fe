"""Held-out evaluation: greedy decoding of a fixed prompt set through the router, scored by the reward.

Eval prompts never touch the buffer and are never trained on. They go through the run's generate hook
(`rollout.generate`) at temperature 0, so a multi-turn run is evaluated multi-turn, tools included; the
reward reads what it reads in training (`multi_turn.reward_text`: the final answer, not the transcript).
Accuracy is the fraction of prompts whose greedy response earns a reward of at least `success_threshold`
(1.0 for the rule rewards). Tool use is reported as in rollout (`eval/tool_use_rate`, ...; `turn_metrics`).
Under `rollout.reward.kind=reliability` the eval also reports the outcome metrics of
`reliability_metrics` (`eval/answerable/*`, `eval/unanswerable/*`), read from the outcomes the reward
keeps on each sample.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from slime_rl.engines.client import EngineClient, EngineError
from slime_rl.engines.protocol import SamplingParams
from slime_rl.rollout.generate import generate_group
from slime_rl.rollout.hook import Generation
from slime_rl.rollout.multi_turn import reward_text, turn_metrics
from slime_rl.rollout.rewards.hub import RewardFn, score_samples
from slime_rl.rollout.rewards.reliability import outcome_of, reliability_metrics
from slime_rl.types import Group, Sample, Status


async def evaluate_greedy(
    client: EngineClient,
    samples: Sequence[Sample],
    *,
    generation: Generation,
    reward_fn: RewardFn,
    decode: Callable[[np.ndarray], str],
    max_new_tokens: int,
    version: int,
    max_concurrency: int = 64,
    success_threshold: float = 1.0,
) -> dict[str, float]:
    """Generate greedily for every (fresh) sample through `generation`'s hook, score it, return `eval/*` metrics.

    A sample whose request was aborted (a weight update of a fully-async run aborts every engine) resumes
    from its tokens, as in rollout. Raises `EngineError` when a sample got no answer from the engines.
    """
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    semaphore = asyncio.Semaphore(max_concurrency)  # one slot per sample, held across its turns and tool calls
    groups = [Group(group_id=s.group_id, samples=[s]) for s in samples]
    while unfinished := [g for g in groups if not g.is_finished]:
        for sample in (s for g in unfinished for s in g.samples):
            sample.status = Status.PENDING  # an answered request sets it; still pending = the engines failed
        await asyncio.gather(
            *(
                generate_group(client, g, greedy, max_new_tokens, version, semaphore, generation=generation)
                for g in unfinished
            )
        )
        if num_unanswered := sum(s.status is Status.PENDING for s in samples):
            raise EngineError(f"eval: {num_unanswered} of {len(samples)} samples got no answer from the engines")
    failed = await score_samples(reward_fn, samples, [reward_text(s, decode) for s in samples])
    metrics = eval_metrics(samples, num_failed=failed, success_threshold=success_threshold)
    return metrics | turn_metrics(samples, prefix="eval")


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
