"""The RL and SFT objectives of one micro-batch, assembled from `slime_rl.algorithms` by config.

Global normalisation: a step's loss is a mean over the trained tokens (or samples) of *all*
micro-batches and data-parallel ranks. Each micro-batch therefore reduces with
`reduction="token_sum_norm"` and a normaliser counted over the whole step (`StepTotals`), so the
micro-batch losses add up to the step loss. The normaliser follows `algorithm.loss_reduction`:
- `token_mean`: the step's trained tokens;
- `sample_mean`: the step's samples with a trained token, each token weighted by 1 / (its sample's
  trained tokens);
- `token_sum_norm` (Dr.GRPO): the constant `loss_norm_tokens_per_sample` x the step's samples, so a
  sample's weight does not depend on its length or on the other samples' lengths.
Metrics are returned as additive shares too: token means times this micro-batch's share of the step's
trained tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from slime_rl.algorithms import decoupled_behaviour_weights, kl_penalty, policy_loss, reduce_loss, tis_weights
from slime_rl.config import AlgorithmConfig
from slime_rl.config.algorithm import policy_loss_name


@dataclass(frozen=True, slots=True)
class StepTotals:
    """Counts over the whole optimizer step (all micro-batches, all data-parallel ranks)."""

    num_tokens: int  # trained response tokens
    num_samples: int  # samples with at least one trained token
    num_all_samples: int  # every sample of the step, trained tokens or not (Dr.GRPO's constant normaliser)


@dataclass(slots=True, kw_only=True)
class TokenInputs:
    """Flat per-token tensors `[T]` of one micro-batch's response tokens."""

    logprobs: Tensor  # current policy, with gradient
    entropy: Tensor  # current policy, with gradient
    old_logprobs: Tensor  # recomputed before the step (or rollout logprobs when not recomputing)
    rollout_logprobs: Tensor  # from the rollout engine
    ref_logprobs: Tensor | None  # reference policy; None when kl_coef == 0
    advantages: Tensor
    mask: Tensor  # bool, True = trained token
    sample_index: Tensor  # int64 sample of each token within the micro-batch
    num_samples: int


def _sample_weights(inputs: TokenInputs, reduction: str) -> Tensor | None:
    """Per-token 1 / (trained tokens of its sample) for `sample_mean`; None for `token_mean`."""
    if reduction != "sample_mean":
        return None
    counts = torch.zeros(inputs.num_samples, dtype=inputs.logprobs.dtype, device=inputs.logprobs.device)
    counts = counts.index_add(0, inputs.sample_index, inputs.mask.to(counts.dtype))
    return 1.0 / counts.clamp_min(1)[inputs.sample_index]


def loss_normaliser(algo: AlgorithmConfig, totals: StepTotals) -> float:
    """The step-wide denominator of `algo.loss_reduction` (see the module docstring)."""
    if algo.loss_reduction == "sample_mean":
        return float(max(totals.num_samples, 1))
    if algo.loss_reduction == "token_sum_norm":
        return float(algo.loss_norm_tokens_per_sample * max(totals.num_all_samples, 1))
    return float(max(totals.num_tokens, 1))


def _token_share(values: Tensor, mask: Tensor, totals: StepTotals) -> Tensor:
    """This micro-batch's additive share of the step's token mean of `values`."""
    return torch.where(mask, values.detach(), torch.zeros_like(values)).sum() / max(totals.num_tokens, 1)


def rl_objective(inputs: TokenInputs, algo: AlgorithmConfig, totals: StepTotals) -> tuple[Tensor, dict[str, Tensor]]:
    """Policy loss + kl_coef * KL(pi || ref) - entropy_coef * entropy for one micro-batch.

    Returns the micro-batch's share of the step loss and additive metric shares (`loss`, `pg_loss`,
    `kl`, `entropy`, `logprob_diff` and the policy loss's own metrics).
    """
    sample_weights = _sample_weights(inputs, algo.loss_reduction)
    normaliser = loss_normaliser(algo, totals)
    mask = inputs.mask
    common = {"reduction": "token_sum_norm", "loss_normaliser": normaliser}
    # Off-policy corrections multiply the per-token loss (see `algorithms.policy_loss`).
    weights, extra_metrics = sample_weights, {}
    if algo.off_policy == "decoupled_ppo":  # old_logprobs are the proximal policy, rollout the behaviour one
        correction, extra_metrics = decoupled_behaviour_weights(
            inputs.old_logprobs, inputs.rollout_logprobs, mask, cap=algo.behav_weight_cap
        )
    elif algo.use_tis or algo.off_policy == "tis":
        correction = tis_weights(inputs.old_logprobs, inputs.rollout_logprobs, algo.tis_cap)
    else:
        correction = None
    if correction is not None:
        weights = correction if weights is None else weights * correction
    loss_fn = policy_loss(policy_loss_name(algo))
    pg_loss, pg_metrics = loss_fn(
        inputs.logprobs,
        inputs.old_logprobs,
        inputs.advantages,
        mask,
        clip_low=algo.eps_clip,
        clip_high=algo.eps_clip_high,
        weights=weights,
        sample_index=inputs.sample_index,
        num_samples=inputs.num_samples,
        **common,
    )
    pg_metrics |= extra_metrics
    per_token_scale = sample_weights if sample_weights is not None else torch.ones_like(inputs.logprobs)
    loss = pg_loss
    share = mask.sum() / max(totals.num_tokens, 1)
    metrics = {name: value * share for name, value in pg_metrics.items()}
    if inputs.ref_logprobs is not None:
        kl = kl_penalty(inputs.logprobs, inputs.ref_logprobs, algo.kl_type)  # [T]
        loss = loss + algo.kl_coef * reduce_loss(kl * per_token_scale, mask, **common)
        metrics["kl"] = _token_share(kl, mask, totals)
    if algo.entropy_coef:
        loss = loss - algo.entropy_coef * reduce_loss(inputs.entropy * per_token_scale, mask, **common)
    metrics |= {
        "loss": loss.detach(),
        "pg_loss": pg_loss.detach(),
        "entropy": _token_share(inputs.entropy, mask, totals),
        "logprob_diff": _token_share((inputs.old_logprobs - inputs.rollout_logprobs).abs(), mask, totals),
    }
    return loss, metrics


def sft_objective(logprobs: Tensor, mask: Tensor, totals: StepTotals) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean negative log-likelihood of the trained tokens over the whole step (SFT)."""
    loss = reduce_loss(-logprobs, mask, reduction="token_sum_norm", loss_normaliser=float(max(totals.num_tokens, 1)))
    return loss, {"loss": loss.detach()}
