"""RL objectives as pure torch functions: advantages, policy losses, KL estimators, importance weights.

Owns the maths only. Every function takes tensors and floats and returns tensors (and a dict of
detached 0-dim metric tensors); none reads a config, logs, calls `.item()` or talks to
`torch.distributed`. Gathering token counts across data-parallel ranks is the trainer's job: it
passes them in as `loss_normaliser` with `reduction="token_sum_norm"`.

Token tensors are flat, `[T]`, over the tokens of the trained (micro-)batch; `mask` [T] marks the
trained tokens and `sample_index` [T] (int64, 0..num_samples-1) names the sample each token belongs to.
"""

from slime_rl.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    dr_grpo_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
)
from slime_rl.algorithms.importance import decoupled_behaviour_weights, tis_weights
from slime_rl.algorithms.kl import KL_KINDS, kl_penalty
from slime_rl.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossFn,
    decoupled_ppo_loss,
    gspo_loss,
    policy_loss,
    ppo_clip_loss,
    sft_loss,
)
from slime_rl.algorithms.reduction import (
    REDUCTIONS,
    masked_mean,
    per_sample_mean,
    reduce_loss,
    sample_index_from_lengths,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_KINDS",
    "POLICY_LOSSES",
    "REDUCTIONS",
    "PolicyLossFn",
    "compute_advantages",
    "decoupled_behaviour_weights",
    "decoupled_ppo_loss",
    "dr_grpo_advantages",
    "grpo_advantages",
    "gspo_loss",
    "kl_penalty",
    "masked_mean",
    "per_sample_mean",
    "policy_loss",
    "ppo_clip_loss",
    "reduce_loss",
    "reinforce_pp_advantages",
    "sample_index_from_lengths",
    "sft_loss",
    "tis_weights",
]
