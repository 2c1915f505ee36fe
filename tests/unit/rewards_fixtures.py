"""Custom reward functions used by test_rewards.py through `module:function` paths."""

from slime_rl.rollout.rewards.hub import batched_reward


def length_reward(sample, response):
    return float(len(response))


async def async_label_reward(sample, response):
    return float(response == sample.label)


@batched_reward
def batched_rank_reward(samples, responses):
    return [float(i) for i in range(len(samples))]


def raising_reward(sample, response):
    raise ZeroDivisionError("bad reward")


def reward_raising_on_label_7(sample, response):
    if sample.label == "7":
        raise ZeroDivisionError("bad reward")
    return 1.0


def reward_returning_text(sample, response):
    return "high"
