"""Custom rewards for `rollout.reward.kind=custom rollout.reward.path=examples.custom_reward:<name>`.

A reward is per sample, `fn(sample, response) -> float`, or batched with `@batched_reward`; either may be
`async def`. A reward that raises marks its samples failed (not trained, counted) and the run goes on.
"""

from slime_rl.rollout.rewards.hub import batched_reward
from slime_rl.types import Sample


def digits_reward(sample: Sample, response: str) -> float:
    """Partial credit for the toy addition task: the fraction of answer digits in the right place."""
    answer, label = response.split("\n", 1)[0].strip(), sample.label or ""
    if not label:
        return 0.0
    matches = sum(a == b for a, b in zip(answer, label, strict=False))
    return matches / max(len(label), len(answer))


@batched_reward
async def length_penalised(samples: list[Sample], responses: list[str]) -> list[float]:
    """Batched example: exact match minus a small penalty per response token."""
    return [
        float(r.strip() == (s.label or "")) - 0.01 * len(s.response_ids)
        for s, r in zip(samples, responses, strict=True)
    ]
