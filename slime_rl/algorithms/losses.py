"""Policy-gradient and SFT losses on flat token tensors: PPO clip (with DAPO clip-higher), GSPO, decoupled PPO.

Every loss takes `logprobs` [T] of the current policy (the only input gradients flow through), reduces
its per-token loss with `reduction.reduce_loss`, and returns `(loss, metrics)` where metrics are
detached 0-dim tensors under short keys (the trainer adds the `train/` prefix):
- `clip_frac`: fraction of trained tokens whose clipped term was selected (its gradient is zero);
- `approx_kl`: token mean of old - new logprob (k1 estimate of KL(old || new));
- `ratio_mean`: token mean of the importance ratio.

The KL penalty against a reference model, the entropy bonus and their coefficients are combined by
the trainer (`kl.kl_penalty`, `reduction.reduce_loss`); this module does not read config.
"""

from typing import Protocol

import torch
from torch import Tensor

from slime_rl.algorithms.importance import decoupled_behaviour_weights
from slime_rl.algorithms.reduction import masked_mean, per_sample_mean, reduce_loss
from slime_rl.errors import ConfigError

# exp() of a log-ratio beyond this overflows float16/bfloat16 ranges for no benefit; verl clamps the same.
_MAX_LOG_RATIO = 20.0


class PolicyLossFn(Protocol):
    """Signature shared by the losses in `POLICY_LOSSES`."""

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        clip_low: float,
        clip_high: float,
        reduction: str,
        weights: Tensor | None = None,
        sample_index: Tensor | None = None,
        num_samples: int | None = None,
        loss_normaliser: float | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


def _clipped_surrogate(
    log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    reduction: str,
    weights: Tensor | None,
    sample_index: Tensor | None,
    num_samples: int | None,
    loss_normaliser: float | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """-min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), weighted and reduced; with metrics.

    `log_ratio` [T] is log(ratio) with its gradient path; masked-out entries are zeroed before use, so
    padding or prompt tokens holding NaN/inf give neither loss nor gradient.
    """
    trained = mask.bool()  # [T]
    log_ratio = torch.where(trained, log_ratio, torch.zeros_like(log_ratio))  # [T]
    ratio = torch.exp(log_ratio)  # [T]
    adv = torch.where(trained, advantages.detach(), torch.zeros_like(log_ratio))  # [T]
    unclipped = ratio * adv  # [T]
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv  # [T]
    per_token = -torch.minimum(unclipped, clipped)  # [T]
    if weights is not None:
        per_token = per_token * torch.where(trained, weights.detach(), torch.zeros_like(per_token))
    loss = reduce_loss(
        per_token,
        mask,
        reduction=reduction,
        sample_index=sample_index,
        num_samples=num_samples,
        loss_normaliser=loss_normaliser,
    )
    metrics = {
        "clip_frac": masked_mean((clipped < unclipped).to(ratio.dtype), mask).detach(),
        "approx_kl": masked_mean(-log_ratio.detach(), mask),
        "ratio_mean": masked_mean(ratio.detach(), mask),
    }
    return loss, metrics


def ppo_clip_loss(
    logprobs: Tensor,  # [T] current policy
    old_logprobs: Tensor,  # [T] policy that the ratio is clipped against (recomputed old or rollout)
    advantages: Tensor,  # [T]
    mask: Tensor,  # [T] bool or 0/1, 1 = trained token
    *,
    clip_low: float,
    clip_high: float,
    reduction: str,
    weights: Tensor | None = None,  # [T] detached per-token weights (TIS, decoupled PPO)
    sample_index: Tensor | None = None,  # [T] int64, needed by reduction="sample_mean"
    num_samples: int | None = None,
    loss_normaliser: float | None = None,  # needed by reduction="token_sum_norm"
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate policy loss (PPO, Schulman et al. 2017) with asymmetric clip (DAPO, Yu et al. 2025).

    ratio = exp(logprobs - old_logprobs) is clipped to [1 - clip_low, 1 + clip_high]; `weights` multiply
    the per-token loss.
    """
    log_ratio = (logprobs - old_logprobs.detach()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # [T]
    return _clipped_surrogate(
        log_ratio,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        reduction=reduction,
        weights=weights,
        sample_index=sample_index,
        num_samples=num_samples,
        loss_normaliser=loss_normaliser,
    )


def gspo_loss(
    logprobs: Tensor,  # [T] current policy
    old_logprobs: Tensor,  # [T]
    advantages: Tensor,  # [T] (constant within a sample for GSPO proper)
    mask: Tensor,  # [T] bool or 0/1
    *,
    clip_low: float,
    clip_high: float,
    reduction: str,
    weights: Tensor | None = None,  # [T]
    sample_index: Tensor | None = None,  # [T] int64, required
    num_samples: int | None = None,  # required
    loss_normaliser: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Group Sequence Policy Optimization loss (Zheng et al. 2025, GSPO): a clipped sequence-level ratio.

    s_i = exp(mean over trained tokens t of sample i of (logprobs_t - old_logprobs_t)). Computed in the
    paper's GSPO-token form s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)]: its value is s_i, so clipping acts
    per sequence, and with `reduction="sample_mean"` (the paper's normalisation) its gradient equals the
    sequence-level one. The paper's clip ranges are small (about 3e-4 / 4e-4).
    """
    if sample_index is None or num_samples is None:
        raise ValueError("gspo_loss needs sample_index and num_samples for its sequence-level ratio")
    token_log_ratio = logprobs.detach() - old_logprobs.detach()  # [T]
    seq_log_ratio, _ = per_sample_mean(token_log_ratio, mask, sample_index, num_samples)  # [S]
    seq_log_ratio = seq_log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # [S]
    log_ratio = logprobs - logprobs.detach() + seq_log_ratio[sample_index]  # [T], value = log s_i
    return _clipped_surrogate(
        log_ratio,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        reduction=reduction,
        weights=weights,
        sample_index=sample_index,
        num_samples=num_samples,
        loss_normaliser=loss_normaliser,
    )


def decoupled_ppo_loss(
    logprobs: Tensor,  # [T] current policy
    prox_logprobs: Tensor,  # [T] proximal policy: the trainer's recomputed logprobs before this step
    behav_logprobs: Tensor,  # [T] behaviour policy: the rollout engine's logprobs
    advantages: Tensor,  # [T]
    mask: Tensor,  # [T] bool or 0/1
    *,
    clip_low: float,
    clip_high: float,
    behav_weight_cap: float,
    reduction: str,
    sample_index: Tensor | None = None,
    num_samples: int | None = None,
    loss_normaliser: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Decoupled PPO loss (Fu et al. 2025, AReaL): clip against pi_prox, weight by pi_prox / pi_behav.

    Tokens whose behaviour weight exceeds `behav_weight_cap` get weight 0 but stay in the
    denominator, as in AReaL. With prox == behav this is `ppo_clip_loss`. Metrics add
    `behav_weight_mean` and `behav_drop_frac`.
    """
    weights, weight_metrics = decoupled_behaviour_weights(prox_logprobs, behav_logprobs, mask, cap=behav_weight_cap)
    loss, metrics = ppo_clip_loss(
        logprobs,
        prox_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        reduction=reduction,
        weights=weights,
        sample_index=sample_index,
        num_samples=num_samples,
        loss_normaliser=loss_normaliser,
    )
    return loss, {**metrics, **weight_metrics}


def sft_loss(logprobs: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Supervised fine-tuning loss: token mean of -logprobs [T] over trained tokens (maximum likelihood)."""
    loss = -masked_mean(logprobs, mask)
    return loss, {"nll": loss.detach()}


POLICY_LOSSES: dict[str, PolicyLossFn] = {"ppo_clip": ppo_clip_loss, "gspo": gspo_loss}


def policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered under `name` (`ppo_clip` or `gspo`).

    Off-policy corrections compose through `weights=`: `importance.tis_weights` for TIS, and for
    decoupled PPO pass the proximal logprobs as `old_logprobs` and
    `importance.decoupled_behaviour_weights` as `weights` (`decoupled_ppo_loss` does this for PPO).
    """
    if name not in POLICY_LOSSES:
        raise ConfigError(f"policy loss {name!r} is unknown; choose one of {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]
