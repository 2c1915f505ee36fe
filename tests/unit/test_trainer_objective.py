"""The per-micro-batch RL objective: shares add up to the whole-step loss, and every `algorithm` knob reaches it.

Values are worked out by hand. With `logprobs == old_logprobs` the PPO ratio is 1, so a trained token's
policy loss is -(its weight) * (its advantage).
"""

from __future__ import annotations

import math

import torch

from slime_rl.config import AlgorithmConfig
from slime_rl.trainer.objective import StepTotals, TokenInputs, rl_objective


def _inputs(logprobs, advantages, mask, sample_index, *, rollout=None, ref=None, entropy=None) -> TokenInputs:
    logprobs = torch.tensor(logprobs)
    return TokenInputs(
        logprobs=logprobs,
        entropy=torch.zeros_like(logprobs) if entropy is None else torch.tensor(entropy),
        old_logprobs=logprobs.clone(),
        rollout_logprobs=logprobs.clone() if rollout is None else torch.tensor(rollout),
        ref_logprobs=None if ref is None else torch.tensor(ref),
        advantages=torch.tensor(advantages),
        mask=torch.tensor(mask),
        sample_index=torch.tensor(sample_index),
        num_samples=max(sample_index) + 1,
    )


def test_rl_objective_token_mean_over_whole_step_from_micro_batch_shares():
    # ratio = 1, so each trained token's loss is -advantage; 3 trained tokens in the step: (-1 - 1 + 2) / 3.
    totals = StepTotals(num_tokens=3, num_samples=2, num_all_samples=2)
    algo = AlgorithmConfig(loss_reduction="token_mean")
    first, _ = rl_objective(_inputs([-1.0, -2.0], [1.0, 1.0], [True, True], [0, 0]), algo, totals)
    second, _ = rl_objective(_inputs([-1.0, -3.0], [-2.0, 5.0], [True, False], [0, 0]), algo, totals)
    torch.testing.assert_close(first + second, torch.tensor(0.0))


def test_rl_objective_sample_mean_weights_each_sample_equally():
    # Sample 0: two tokens with advantage 1 (mean loss -1); sample 1: one token with advantage 3 (loss -3).
    totals = StepTotals(num_tokens=3, num_samples=2, num_all_samples=2)
    algo = AlgorithmConfig(loss_reduction="sample_mean")
    loss, _ = rl_objective(_inputs([-1.0, -1.0, -1.0], [1.0, 1.0, 3.0], [True, True, True], [0, 0, 1]), algo, totals)
    torch.testing.assert_close(loss, torch.tensor(-2.0))


def test_rl_objective_token_sum_norm_divides_by_constant_tokens_per_sample():
    # Dr.GRPO: sum of token losses -(1 + 1 + 3) = -5 over 4 tokens per sample x 2 samples = -0.625,
    # not over the 3 trained tokens.
    totals = StepTotals(num_tokens=3, num_samples=2, num_all_samples=2)
    algo = AlgorithmConfig(
        advantage_estimator="dr_grpo", loss_reduction="token_sum_norm", loss_norm_tokens_per_sample=4
    )
    loss, _ = rl_objective(_inputs([-1.0, -1.0, -1.0], [1.0, 1.0, 3.0], [True, True, True], [0, 0, 1]), algo, totals)
    torch.testing.assert_close(loss, torch.tensor(-0.625))


def test_rl_objective_token_sum_norm_counts_samples_without_trained_tokens():
    # A failed sample (no trained token) still counts in Dr.GRPO's constant normaliser: -2 / (2 x 2) = -0.5.
    totals = StepTotals(num_tokens=1, num_samples=1, num_all_samples=2)
    algo = AlgorithmConfig(loss_reduction="token_sum_norm", loss_norm_tokens_per_sample=2)
    loss, _ = rl_objective(_inputs([-1.0, -1.0], [2.0, 5.0], [True, False], [0, 1]), algo, totals)
    torch.testing.assert_close(loss, torch.tensor(-0.5))


def test_rl_objective_tis_weights_tokens_by_capped_old_over_rollout_ratio():
    # old / rollout = 1.5 and 4 (capped at 2): -(1.5 * 1 + 2 * 1) / 2 = -1.75.
    totals = StepTotals(num_tokens=2, num_samples=1, num_all_samples=1)
    algo = AlgorithmConfig(use_tis=True, tis_cap=2.0)
    rollout = [-1.0 - math.log(1.5), -1.0 - math.log(4.0)]
    loss, _ = rl_objective(_inputs([-1.0, -1.0], [1.0, 1.0], [True, True], [0, 0], rollout=rollout), algo, totals)
    torch.testing.assert_close(loss, torch.tensor(-1.75))


def test_rl_objective_decoupled_ppo_drops_tokens_above_behaviour_cap():
    # prox / behav = 2 (kept, weight 2) and 10 (above the cap 5: weight 0, still in the denominator):
    # -(2 * 1 + 0 * 3) / 2 = -1.
    totals = StepTotals(num_tokens=2, num_samples=1, num_all_samples=1)
    algo = AlgorithmConfig(off_policy="decoupled_ppo", behav_weight_cap=5.0)
    rollout = [-1.0 - math.log(2.0), -1.0 - math.log(10.0)]
    loss, metrics = rl_objective(_inputs([-1.0, -1.0], [1.0, 3.0], [True, True], [0, 0], rollout=rollout), algo, totals)
    torch.testing.assert_close(loss, torch.tensor(-1.0))
    torch.testing.assert_close(metrics["behav_drop_frac"], torch.tensor(0.5))


def test_rl_objective_adds_kl_and_subtracts_entropy_bonus():
    # Advantages 0: no policy loss. k1 KL = logprobs - ref = 0.4 and 0.2, mean 0.3, times kl_coef 0.5 = 0.15;
    # entropy mean (1 + 3) / 2 = 2 times entropy_coef 0.1 = 0.2 is subtracted: 0.15 - 0.2 = -0.05.
    totals = StepTotals(num_tokens=2, num_samples=1, num_all_samples=1)
    algo = AlgorithmConfig(kl_coef=0.5, kl_type="k1", entropy_coef=0.1)
    inputs = _inputs([-1.0, -2.0], [0.0, 0.0], [True, True], [0, 0], ref=[-1.4, -2.2], entropy=[1.0, 3.0])
    loss, metrics = rl_objective(inputs, algo, totals)
    torch.testing.assert_close(loss, torch.tensor(-0.05))
    torch.testing.assert_close(metrics["kl"], torch.tensor(0.3))
