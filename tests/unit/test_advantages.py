"""Advantage estimators against hand-computed values (std uses Bessel's correction, as torch.std)."""

import math

import pytest
import torch

from slime_rl.algorithms.advantages import (
    compute_advantages,
    dr_grpo_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
)
from slime_rl.errors import ConfigError


def test_grpo_advantages_tied_rewards_give_zero():
    # Every group is tied: r - mean = 0, and 0 / (std 0 + eps) = 0, not NaN.
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), group_size=2, normalize_std=True)
    torch.testing.assert_close(adv, torch.zeros(4))


def test_grpo_advantages_without_std_centre_each_group_separately():
    # Groups [0, 1] (mean 0.5) and [2, 4] (mean 3): [-0.5, 0.5, -1, 1].
    adv = grpo_advantages(torch.tensor([0.0, 1.0, 2.0, 4.0]), group_size=2, normalize_std=False)
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.5, -1.0, 1.0]))


def test_grpo_advantages_with_std_divide_by_group_std():
    # Group [0, 0, 0, 4]: mean 1, deviations [-1, -1, -1, 3], var = (1 + 1 + 1 + 9) / 3 = 4, std 2
    #   -> [-0.5, -0.5, -0.5, 1.5].
    # Group [0, 2, 0, 2]: mean 1, deviations [-1, 1, -1, 1], var = 4 / 3, std = 1.154701
    #   -> [-0.866025, 0.866025, -0.866025, 0.866025].
    rewards = torch.tensor([0.0, 0.0, 0.0, 4.0, 0.0, 2.0, 0.0, 2.0])
    adv = grpo_advantages(rewards, group_size=4, normalize_std=True, eps=0.0)
    c = math.sqrt(3) / 2  # 1 / sqrt(4 / 3) = 0.866025
    torch.testing.assert_close(adv, torch.tensor([-0.5, -0.5, -0.5, 1.5, -c, c, -c, c]))


def test_grpo_advantages_eps_is_added_to_std():
    # Group [0, 2]: mean 1, std sqrt(2); with eps = 0.5: +-1 / (1.414214 + 0.5) = +-0.522408.
    adv = grpo_advantages(torch.tensor([0.0, 2.0]), group_size=2, normalize_std=True, eps=0.5)
    expected = 1 / (math.sqrt(2) + 0.5)
    torch.testing.assert_close(adv, torch.tensor([-expected, expected]))


def test_grpo_advantages_single_sample_groups_give_zero():
    adv = grpo_advantages(torch.tensor([3.0, -1.0]), group_size=1, normalize_std=True)
    torch.testing.assert_close(adv, torch.zeros(2))


def test_grpo_advantages_length_not_multiple_of_group_raises_value_error():
    with pytest.raises(ValueError, match="group_size=2"):
        grpo_advantages(torch.tensor([1.0, 2.0, 3.0]), group_size=2)


def test_dr_grpo_advantages_centre_without_std():
    # Group [0, 0, 0, 4]: mean 1 -> [-1, -1, -1, 3]; no division by std 2.
    adv = dr_grpo_advantages(torch.tensor([0.0, 0.0, 0.0, 4.0]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([-1.0, -1.0, -1.0, 3.0]))


def test_reinforce_pp_advantages_divide_by_batch_std():
    # Centred per group: [0, 2] -> [-1, 1]; [1, 1] -> [0, 0].
    # Batch std of [-1, 1, 0, 0]: mean 0, var = (1 + 1) / 3, std = sqrt(2 / 3) = 0.816497
    #   -> [-1.224745, 1.224745, 0, 0] (GRPO would give +-0.707107 for the first group).
    adv = reinforce_pp_advantages(torch.tensor([0.0, 2.0, 1.0, 1.0]), group_size=2, eps=0.0)
    c = math.sqrt(3 / 2)
    torch.testing.assert_close(adv, torch.tensor([-c, c, 0.0, 0.0]))


def test_compute_advantages_gspo_uses_grpo_advantages():
    rewards = torch.tensor([0.0, 1.0, 1.0, 3.0])
    torch.testing.assert_close(
        compute_advantages("gspo", rewards, 2, normalize_std=True),
        grpo_advantages(rewards, 2, normalize_std=True),
    )


def test_compute_advantages_dr_grpo_ignores_normalize_std():
    adv = compute_advantages("dr_grpo", torch.tensor([0.0, 4.0]), 2, normalize_std=True)
    torch.testing.assert_close(adv, torch.tensor([-2.0, 2.0]))


def test_compute_advantages_grpo_passes_normalize_std_and_eps():
    # [0, 2]: centred [-1, 1], std sqrt(2), eps 0 -> +-0.707107.
    adv = compute_advantages("grpo", torch.tensor([0.0, 2.0]), 2, normalize_std=True, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([-1 / math.sqrt(2), 1 / math.sqrt(2)]))


def test_compute_advantages_unknown_name_raises_config_error_listing_names():
    with pytest.raises(ConfigError, match=r"dr_grpo.*grpo.*gspo.*reinforce_pp"):
        compute_advantages("ppo", torch.zeros(2), 2, normalize_std=True)


def test_grpo_advantages_leave_invalid_samples_out_of_group_stats():
    # Valid rewards [1, 0, 1]: mean 2/3, Bessel std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3).
    # The failed third sample (reward 0) neither shifts the mean nor gets an advantage.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    valid = torch.tensor([True, True, False, True])
    adv = grpo_advantages(rewards, group_size=4, normalize_std=True, eps=0.0, valid=valid)
    std = (1 / 3) ** 0.5
    torch.testing.assert_close(adv, torch.tensor([(1 / 3) / std, (-2 / 3) / std, 0.0, (1 / 3) / std]))


def test_grpo_advantages_group_with_one_valid_sample_gives_zero():
    adv = grpo_advantages(torch.tensor([5.0, 0.0]), group_size=2, valid=torch.tensor([True, False]))
    torch.testing.assert_close(adv, torch.zeros(2))


def test_reinforce_pp_advantages_batch_std_over_valid_samples_only():
    # Groups [0, 2] and [1, (failed)]: centred [-1, 1, 0, 0]; batch std over the 3 valid values
    # (-1, 1, 0) is 1, so the advantages are the centred values.
    rewards = torch.tensor([0.0, 2.0, 1.0, 0.0])
    valid = torch.tensor([True, True, True, False])
    adv = reinforce_pp_advantages(rewards, group_size=2, eps=0.0, valid=valid)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]))
