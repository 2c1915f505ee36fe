"""Config rules the RolloutManager relies on: APRIL sizes, drop budget, and the TIS requirement."""

import pytest

from slime_rl.config import AlgorithmConfig
from slime_rl.config.rollout import RolloutConfig, groups_in_flight, max_filter_drops
from slime_rl.config.root import SlimeRLConfig
from slime_rl.errors import ConfigError
from slime_rl.rollout.filters import make_group_filter, nonzero_std


def test_groups_in_flight_is_twice_the_target_under_april_by_default():
    assert groups_in_flight(RolloutConfig(rollout_batch_size=4)) == 4
    assert groups_in_flight(RolloutConfig(rollout_batch_size=4, use_april=True)) == 8
    assert groups_in_flight(RolloutConfig(rollout_batch_size=4, use_april=True, over_sampling_batch_size=6)) == 6


def test_max_filter_drops_defaults_to_the_groups_in_flight():
    assert max_filter_drops(RolloutConfig(rollout_batch_size=4, use_april=True)) == 8
    assert max_filter_drops(RolloutConfig(rollout_batch_size=4, max_filter_drops_per_step=0)) == 0


def test_rollout_config_negative_partial_staleness_is_rejected():
    with pytest.raises(ConfigError, match="rollout.max_partial_staleness must be >= 0"):
        RolloutConfig(max_partial_staleness=-1)


def test_partial_policy_tis_without_tis_in_the_objective_is_rejected_with_fix():
    with pytest.raises(ConfigError, match="set algorithm.use_tis=true"):
        SlimeRLConfig(rollout=RolloutConfig(partial_policy="tis"))
    SlimeRLConfig(rollout=RolloutConfig(partial_policy="tis"), algorithm=AlgorithmConfig(use_tis=True))
    SlimeRLConfig(rollout=RolloutConfig(partial_policy="tis"), algorithm=AlgorithmConfig(off_policy="tis"))


def test_dynamic_filter_resolves_a_dotted_path_like_module_function():
    assert make_group_filter("slime_rl.rollout.filters.nonzero_std") is nonzero_std
    assert make_group_filter("slime_rl.rollout.filters:nonzero_std") is nonzero_std
