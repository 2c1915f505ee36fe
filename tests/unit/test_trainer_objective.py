"""The per-micro-batch RL objective: shares add up to the whole-step loss, sample_mean weights samples equally."""

from __future__ import annotations

import torch

from slime_rl.config import AlgorithmConfig
from slime_rl.trainer.objective import StepTotals, TokenInputs, rl_objective


def _inputs(logprobs, advantages, mask, sample_index) -> TokenInputs:
    logprobs = torch.tensor(logprobs)
    return TokenInputs(
        logprobs=logprobs,
        entropy=torch.zeros_like(logprobs),
        old_logprobs=logprobs.clone(),
        rollout_logprobs=logprobs.clone(),
        ref_logprobs=None,
        advantages=torch.tensor(advantages),
        mask=torch.tensor(mask),
        sample_index=torch.tensor(sample_index),
        num_samples=max(sample_index) + 1,
    )


def test_rl_objective_token_mean_over_whole_step_from_micro_batch_shares():
    # ratio = 1, so each trained token's loss is -advantage; 3 trained tokens in the step: (-1 - 1 + 2) / 3.
    totals = StepTotals(num_tokens=3, num_samples=2)
    algo = AlgorithmConfig(loss_reduction="token_mean")
    first, _ = rl_objective(_inputs([-1.0, -2.0], [1.0, 1.0], [True, True], [0, 0]), algo, totals)
    second, _ = rl_objective(_inputs([-1.0, -3.0], [-2.0, 5.0], [True, False], [0, 0]), algo, totals)
    torch.testing.assert_close(first + second, torch.tensor(0.0))


def test_rl_objective_sample_mean_weights_each_sample_equally():
    # Sample 0: two tokens with advantage 1 (mean loss -1); sample 1: one token with advantage 3 (loss -3).
    totals = StepTotals(num_tokens=3, num_samples=2)
    algo = AlgorithmConfig(loss_reduction="sample_mean")
    loss, _ = rl_objective(_inputs([-1.0, -1.0, -1.0], [1.0, 1.0, 3.0], [True, True, True], [0, 0, 1]), algo, totals)
    torch.testing.assert_close(loss, torch.tensor(-2.0))
