import asyncio

from slime_rl.config import RewardConfig
from slime_rl.rollout.rewards.hub import make_reward_fn, score_samples
from slime_rl.types import Sample


def _score(path: str, responses: list[str], label: str = "432") -> list[float]:
    samples = [Sample(uid=str(i), group_id="g", index=i, prompt_ids=[1], label=label) for i in range(len(responses))]
    asyncio.run(score_samples(make_reward_fn(RewardConfig(kind="custom", path=path)), samples, responses))
    return [s.reward for s in samples]


def test_example_digits_reward_gives_partial_credit_per_digit():
    # "431" vs "432": 2 of 3 digits in place; "4320" vs "432": 3 of max(3, 4) = 4
    assert _score("examples.custom_reward:digits_reward", ["432", "431", "4320"]) == [1.0, 2 / 3, 0.75]


def test_example_batched_reward_penalises_length():
    # the samples carry no response tokens, so the penalty is 0
    assert _score("examples.custom_reward:length_penalised", ["432", "x"]) == [1.0, 0.0]
