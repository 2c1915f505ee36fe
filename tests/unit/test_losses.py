"""Policy losses, KL estimators, importance weights and reductions against hand-computed values.

Ratios are set exactly by choosing old_logprobs = 0 and logprobs = log(ratio).
"""

import math

import pytest
import torch

from slime_rl.algorithms.importance import decoupled_behaviour_weights, tis_weights
from slime_rl.algorithms.kl import kl_penalty
from slime_rl.algorithms.losses import decoupled_ppo_loss, gspo_loss, policy_loss, ppo_clip_loss, sft_loss
from slime_rl.algorithms.reduction import masked_mean, reduce_loss, sample_index_from_lengths
from slime_rl.config.algorithm import AlgorithmConfig, policy_loss_name
from slime_rl.errors import ConfigError

CLIP = {"clip_low": 0.2, "clip_high": 0.28}  # ratio range [0.8, 1.28]


def _logprobs(ratios: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(ratios)).requires_grad_(True)


def _ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


# --- PPO clip ---------------------------------------------------------------------------------


def test_ppo_clip_loss_clips_both_sides_asymmetrically():
    # ratio, A -> unclipped r*A, clipped clip(r)*A, -min:
    #   1.5,  1 -> 1.5,  1.28  -> -1.28 (clipped high)
    #   0.5, -1 -> -0.5, -0.8  ->  0.8  (clipped low)
    #   1.5, -1 -> -1.5, -1.28 ->  1.5
    #   0.5,  1 -> 0.5,  0.8   -> -0.5
    #   1.0,  2 -> 2,    2     -> -2
    # token mean = (-1.28 + 0.8 + 1.5 - 0.5 - 2) / 5 = -1.48 / 5 = -0.296; clip_frac = 2 / 5.
    logprobs = _logprobs([1.5, 0.5, 1.5, 0.5, 1.0])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 2.0])
    loss, metrics = ppo_clip_loss(logprobs, torch.zeros(5), adv, _ones(5), **CLIP, reduction="token_mean")
    torch.testing.assert_close(loss, torch.tensor(-0.296))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.4))
    # approx_kl = mean(old - new) = -(2 ln 1.5 + 2 ln 0.5) / 5 = -2 ln 0.75 / 5 = 0.1150728
    torch.testing.assert_close(metrics["approx_kl"], torch.tensor(-2 * math.log(0.75) / 5))
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.0))


def test_ppo_clip_loss_clipped_tokens_get_zero_gradient():
    # d loss / d logprob_t = -r_t * A_t / 5 where unclipped, 0 where clipped (same batch as above):
    #   [0, 0, -1.5 * -1 / 5, -0.5 * 1 / 5, -1 * 2 / 5] = [0, 0, 0.3, -0.1, -0.4]
    logprobs = _logprobs([1.5, 0.5, 1.5, 0.5, 1.0])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 2.0])
    loss, _ = ppo_clip_loss(logprobs, torch.zeros(5), adv, _ones(5), **CLIP, reduction="token_mean")
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([0.0, 0.0, 0.3, -0.1, -0.4]))


def test_ppo_clip_loss_high_side_uses_clip_high_and_low_side_clip_low():
    # r = 1.25, A = 1: inside 1.28, not clipped -> -1.25. (symmetric eps 0.2 would clip it to 1.2)
    # r = 0.75, A = -1: below 0.8, clipped -> -min(-0.75, -0.8) = 0.8.
    # token mean = (-1.25 + 0.8) / 2 = -0.225; clip_frac = 1 / 2.
    logprobs = _logprobs([1.25, 0.75])
    loss, metrics = ppo_clip_loss(
        logprobs, torch.zeros(2), torch.tensor([1.0, -1.0]), _ones(2), **CLIP, reduction="token_mean"
    )
    torch.testing.assert_close(loss, torch.tensor(-0.225))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.5))


def test_ppo_clip_loss_weights_multiply_per_token_loss():
    # ratio 1, A = 1 -> per-token -1; weights [2, 0.5] -> [-2, -0.5]; token mean -1.25.
    loss, _ = ppo_clip_loss(
        _logprobs([1.0, 1.0]),
        torch.zeros(2),
        torch.ones(2),
        _ones(2),
        **CLIP,
        reduction="token_mean",
        weights=torch.tensor([2.0, 0.5]),
    )
    torch.testing.assert_close(loss, torch.tensor(-1.25))


def test_ppo_clip_loss_token_and_sample_mean_differ_on_ragged_samples():
    # Samples of 1 and 3 tokens, ratio 1; A = 2 for sample 0 and -1 for sample 1.
    # per-token loss = -A = [-2, 1, 1, 1]
    # token_mean = (-2 + 1 + 1 + 1) / 4 = 0.25
    # sample_mean = mean(-2 / 1, 3 / 3) = (-2 + 1) / 2 = -0.5
    # token_sum_norm with normaliser 2 samples * 4 max tokens = 8: 1 / 8 = 0.125
    index = sample_index_from_lengths([1, 3])
    adv = torch.tensor([2.0, -1.0, -1.0, -1.0])
    common = {"sample_index": index, "num_samples": 2, "loss_normaliser": 8.0}
    losses = {
        reduction: ppo_clip_loss(
            _logprobs([1.0] * 4), torch.zeros(4), adv, _ones(4), **CLIP, reduction=reduction, **common
        )[0]
        for reduction in ("token_mean", "sample_mean", "token_sum_norm")
    }
    torch.testing.assert_close(losses["token_mean"], torch.tensor(0.25))
    torch.testing.assert_close(losses["sample_mean"], torch.tensor(-0.5))
    torch.testing.assert_close(losses["token_sum_norm"], torch.tensor(0.125))


def test_ppo_clip_loss_masked_tokens_contribute_nothing():
    # Token 2 is masked and holds garbage (NaN logprob, huge advantage and weight):
    # loss and gradient are those of tokens 0 and 1 alone: ratio 1, A = [1, 3] -> mean -2.
    logprobs = torch.tensor([0.0, 0.0, float("nan")], requires_grad=True)
    adv = torch.tensor([1.0, 3.0, 1e9])
    weights = torch.tensor([1.0, 1.0, float("inf")])
    mask = torch.tensor([1, 1, 0])
    loss, metrics = ppo_clip_loss(logprobs, torch.zeros(3), adv, mask, **CLIP, reduction="token_mean", weights=weights)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-2.0))
    torch.testing.assert_close(logprobs.grad, torch.tensor([-0.5, -1.5, 0.0]))
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.0))


def test_ppo_clip_loss_gradients_flow_only_through_logprobs():
    logprobs = _logprobs([1.2, 0.9])
    old = torch.zeros(2, requires_grad=True)
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    weights = torch.tensor([1.0, 2.0], requires_grad=True)
    loss, metrics = ppo_clip_loss(logprobs, old, adv, _ones(2), **CLIP, reduction="token_mean", weights=weights)
    loss.backward()
    assert logprobs.grad is not None
    assert old.grad is None and adv.grad is None and weights.grad is None
    assert all(not m.requires_grad for m in metrics.values())


def test_ppo_clip_loss_empty_mask_gives_zero_loss():
    loss, metrics = ppo_clip_loss(
        _logprobs([1.5]),
        torch.zeros(1),
        torch.ones(1),
        torch.zeros(1, dtype=torch.bool),
        **CLIP,
        reduction="token_mean",
    )
    torch.testing.assert_close(loss, torch.tensor(0.0))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.0))


# --- GSPO -------------------------------------------------------------------------------------


def test_gspo_loss_clips_the_sequence_ratio():
    # Sample 0: token log-ratios [0.1, 0.3], mean 0.2, s0 = e^0.2 = 1.221403 (inside [0.8, 1.28]), A = 1
    #   -> loss -1.221403.
    # Sample 1: log-ratio -0.5, s1 = e^-0.5 = 0.606531 < 0.8, A = -1 -> -min(-0.606531, -0.8) = 0.8 (clipped).
    # sample_mean = (-1.221403 + 0.8) / 2 = -0.210701; clip_frac = 1 of 3 tokens.
    logprobs = torch.tensor([0.1, 0.3, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss, metrics = gspo_loss(
        logprobs,
        torch.zeros(3),
        adv,
        _ones(3),
        **CLIP,
        reduction="sample_mean",
        sample_index=sample_index_from_lengths([2, 1]),
        num_samples=2,
    )
    torch.testing.assert_close(loss, torch.tensor((-math.exp(0.2) + 0.8) / 2))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(1 / 3))
    # Gradient of the sequence-level objective: d(-s0 / 2) / d logprob_t = -(1/2) * s0 * (1/2) = -0.305351
    # for both tokens of sample 0; the clipped sample 1 gets 0.
    loss.backward()
    g = -math.exp(0.2) / 4
    torch.testing.assert_close(logprobs.grad, torch.tensor([g, g, 0.0]))


def test_gspo_loss_without_sample_index_raises_value_error():
    with pytest.raises(ValueError, match="sample_index"):
        gspo_loss(_logprobs([1.0]), torch.zeros(1), torch.ones(1), _ones(1), **CLIP, reduction="sample_mean")


# --- KL ---------------------------------------------------------------------------------------


def test_kl_penalty_known_ratio_gives_k1_k2_k3():
    # log_ratio = logp - ref = [ln 2, -ln 2]
    # k1 = [0.693147, -0.693147]
    # k2 = 0.5 * ln(2)^2 = 0.240227 (both)
    # k3 = exp(-log_ratio) + log_ratio - 1 = [0.5 + 0.693147 - 1, 2 - 0.693147 - 1] = [0.193147, 0.306853]
    ln2 = math.log(2)
    logprobs = torch.tensor([ln2, -ln2])
    ref = torch.zeros(2)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([ln2, -ln2]))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), torch.tensor([0.5 * ln2**2] * 2))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), torch.tensor([ln2 - 0.5, 1 - ln2]))


def test_kl_penalty_k3_is_non_negative_and_zero_at_equal_logprobs():
    logprobs = torch.linspace(-5.0, 0.0, 11)
    ref = torch.linspace(0.0, -5.0, 11)
    assert (kl_penalty(logprobs, ref, "k3") >= 0).all()
    torch.testing.assert_close(kl_penalty(ref, ref, "k3"), torch.zeros(11))


def test_kl_penalty_gradients_flow_only_through_logprobs():
    logprobs = torch.tensor([-1.0], requires_grad=True)
    ref = torch.tensor([-2.0], requires_grad=True)
    kl_penalty(logprobs, ref, "k3").sum().backward()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = -exp(-1) + 1 = 0.632121
    torch.testing.assert_close(logprobs.grad, torch.tensor([1 - math.exp(-1)]))
    assert ref.grad is None


def test_kl_penalty_unknown_kind_raises_config_error_listing_kinds():
    with pytest.raises(ConfigError, match=r"k1.*k2.*k3"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


# --- importance weights and decoupled PPO -----------------------------------------------------


def test_tis_weights_are_capped_and_detached():
    # old - rollout = [ln 3, ln 1.5, -ln 2] -> exp = [3, 1.5, 0.5] -> cap 2 -> [2, 1.5, 0.5]
    old = torch.log(torch.tensor([3.0, 1.5, 0.5])).requires_grad_(True)
    weights = tis_weights(old, torch.zeros(3), cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5, 0.5]))
    assert not weights.requires_grad


def test_decoupled_ppo_loss_with_prox_equal_behav_matches_ppo_clip_loss():
    logprobs_a = _logprobs([1.5, 0.5, 1.1])
    logprobs_b = _logprobs([1.5, 0.5, 1.1])
    prox = torch.tensor([0.1, -0.2, 0.0])
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss_d, metrics_d = decoupled_ppo_loss(
        logprobs_a, prox, prox.clone(), adv, _ones(3), **CLIP, behav_weight_cap=5.0, reduction="token_mean"
    )
    loss_p, metrics_p = ppo_clip_loss(logprobs_b, prox, adv, _ones(3), **CLIP, reduction="token_mean")
    loss_d.backward()
    loss_p.backward()
    torch.testing.assert_close(loss_d, loss_p)
    torch.testing.assert_close(logprobs_a.grad, logprobs_b.grad)
    torch.testing.assert_close(metrics_d["clip_frac"], metrics_p["clip_frac"])
    torch.testing.assert_close(metrics_d["behav_weight_mean"], torch.tensor(1.0))
    torch.testing.assert_close(metrics_d["behav_drop_frac"], torch.tensor(0.0))


def test_decoupled_ppo_loss_drops_tokens_above_behav_weight_cap():
    # prox - behav = [ln 2, ln 8] -> weights [2, 8]; cap 5 drops token 1 (weight 0, still in the denominator).
    # ratio (vs prox) 1, A = 1 -> per-token [-1 * 2, -1 * 0] -> token mean = -2 / 2 = -1.
    prox = torch.zeros(2)
    behav = -torch.log(torch.tensor([2.0, 8.0]))
    loss, metrics = decoupled_ppo_loss(
        prox.clone().requires_grad_(True),
        prox,
        behav,
        torch.ones(2),
        _ones(2),
        **CLIP,
        behav_weight_cap=5.0,
        reduction="token_mean",
    )
    torch.testing.assert_close(loss, torch.tensor(-1.0))
    torch.testing.assert_close(metrics["behav_drop_frac"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["behav_weight_mean"], torch.tensor(2.0))


def test_decoupled_behaviour_weights_are_detached():
    prox = torch.zeros(1, requires_grad=True)
    weights, _ = decoupled_behaviour_weights(prox, torch.zeros(1), _ones(1), cap=5.0)
    assert not weights.requires_grad


# --- SFT, reductions, registry ----------------------------------------------------------------


def test_sft_loss_is_masked_mean_nll():
    # -(-1 - 2) / 2 = 1.5; the masked -9 is ignored.
    loss, metrics = sft_loss(torch.tensor([-1.0, -2.0, -9.0]), torch.tensor([1, 1, 0]))
    torch.testing.assert_close(loss, torch.tensor(1.5))
    torch.testing.assert_close(metrics["nll"], torch.tensor(1.5))


def test_masked_mean_empty_mask_gives_zero():
    torch.testing.assert_close(masked_mean(torch.tensor([4.0]), torch.tensor([False])), torch.tensor(0.0))


def test_reduce_loss_sample_mean_skips_samples_without_trained_tokens():
    # Samples [3] and [5, 7]; sample 1 is fully masked -> mean over sample 0 only = 3 (not (3 + 0) / 2).
    loss = reduce_loss(
        torch.tensor([3.0, 5.0, 7.0]),
        torch.tensor([1, 0, 0]),
        reduction="sample_mean",
        sample_index=sample_index_from_lengths([1, 2]),
        num_samples=2,
    )
    torch.testing.assert_close(loss, torch.tensor(3.0))


def test_reduce_loss_unknown_reduction_raises_config_error_listing_choices():
    with pytest.raises(ConfigError, match=r"sample_mean.*token_mean.*token_sum_norm"):
        reduce_loss(torch.zeros(1), _ones(1), reduction="seq_sum")


def test_reduce_loss_sample_mean_without_index_raises_value_error():
    with pytest.raises(ValueError, match="sample_index"):
        reduce_loss(torch.zeros(1), _ones(1), reduction="sample_mean")


def test_sample_index_from_lengths_repeats_sample_ids():
    torch.testing.assert_close(sample_index_from_lengths([2, 0, 1]), torch.tensor([0, 0, 2]))


def test_policy_loss_known_names_return_functions():
    assert policy_loss("ppo_clip") is ppo_clip_loss
    assert policy_loss("gspo") is gspo_loss


def test_policy_loss_unknown_name_raises_config_error_listing_names():
    with pytest.raises(ConfigError, match=r"gspo.*ppo_clip"):
        policy_loss("a2c")


def test_policy_loss_name_gspo_estimator_selects_gspo_loss():
    assert policy_loss_name(AlgorithmConfig(advantage_estimator="gspo")) == "gspo"
    assert policy_loss_name(AlgorithmConfig(advantage_estimator="dr_grpo")) == "ppo_clip"


def test_algorithm_config_token_sum_norm_without_length_raises_config_error():
    with pytest.raises(ConfigError, match="loss_norm_tokens_per_sample"):
        AlgorithmConfig(loss_reduction="token_sum_norm")
