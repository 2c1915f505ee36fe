"""Detached per-token importance weights that correct for off-policy tokens.

- TIS (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"):
  the rollout engine's logprobs differ from the trainer's even for the same weights;
  w = min(exp(old - rollout), cap).
- Decoupled PPO behaviour weights (Fu et al. 2025, AReaL, arXiv 2505.24298): the tokens came from an
  older behaviour policy; w = pi_prox / pi_behav, and tokens whose weight exceeds the cap are dropped
  (weight 0), as AReaL's reference implementation does.
Both multiply the per-token policy loss (`weights=` of the policy losses).
"""

import torch
from torch import Tensor

from slime_rl.algorithms.reduction import masked_mean


def tis_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance weights [T] = clamp(exp(old - rollout), max=cap), detached (Yao et al. 2025)."""
    log_w = (old_logprobs - rollout_logprobs).detach().clamp(max=20.0)  # [T]
    return torch.exp(log_w).clamp(max=cap)


def decoupled_behaviour_weights(
    prox_logprobs: Tensor, behav_logprobs: Tensor, mask: Tensor, *, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Decoupled-PPO behaviour weights [T] = pi_prox / pi_behav, 0 where above `cap` (AReaL, Fu et al. 2025).

    Returns the detached weights and metrics `behav_weight_mean` (over kept trained tokens) and
    `behav_drop_frac` (fraction of trained tokens dropped by the cap).
    """
    log_w = (prox_logprobs - behav_logprobs).detach().clamp(max=20.0)  # [T]
    weights = torch.exp(log_w)  # [T]
    kept = weights <= cap  # [T] bool
    trained = mask.bool()
    metrics = {
        "behav_weight_mean": masked_mean(weights, trained & kept),
        "behav_drop_frac": masked_mean((~kept).to(weights.dtype), trained),
    }
    return torch.where(kept, weights, torch.zeros_like(weights)), metrics
