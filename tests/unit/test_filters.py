import pytest

from slime_rl.errors import ConfigError
from slime_rl.rollout.filters import keep_all, make_group_filter, nonzero_std
from slime_rl.types import Group, Sample


def _group(rewards: list[float]) -> Group:
    samples = [Sample(uid=f"g-{i}", group_id="g", index=i, prompt_ids=[1], reward=r) for i, r in enumerate(rewards)]
    return Group(group_id="g", samples=samples)


def test_nonzero_std_drops_groups_whose_rewards_tie():
    assert not nonzero_std(_group([1.0, 1.0, 1.0]))
    assert nonzero_std(_group([0.0, 1.0, 1.0]))


def test_nonzero_std_ignores_failed_samples():
    group = _group([1.0, 1.0, 1.0])
    group.samples[0].fail("reward: boom")  # reward 0 now, but it is no score
    assert not nonzero_std(group)


def test_make_group_filter_none_keeps_everything():
    assert make_group_filter(None) is keep_all


def test_make_group_filter_unknown_name_lists_builtins():
    with pytest.raises(ConfigError, match=r"choose one of \['nonzero_std'\]"):
        make_group_filter("zero")
