"""RL objective settings (`algorithm` group): advantages, policy loss, KL and off-policy corrections."""

from dataclasses import dataclass

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class AlgorithmConfig:
    advantage_estimator: str = "grpo"  # grpo | dr_grpo | reinforce_pp | gspo (gspo also selects the GSPO loss)
    normalize_std: bool = True  # grpo/gspo: divide group-centred rewards by the group std
    loss_reduction: str = "token_mean"  # token_mean | sample_mean | token_sum_norm (Dr.GRPO constant normaliser)
    loss_norm_tokens_per_sample: int = 0  # token_sum_norm: tokens per sample in the denominator (Dr.GRPO: max len)
    eps_clip: float = 0.2  # PPO clip below 1 (epsilon_low), dimensionless ratio offset
    eps_clip_high: float = 0.2  # PPO clip above 1 (DAPO's clip-higher: 0.28), dimensionless ratio offset
    kl_coef: float = 0.0  # KL loss weight against the reference policy; 0 = no reference model
    kl_type: str = "k3"  # k1 | k2 | k3 estimator of KL(pi || ref)
    entropy_coef: float = 0.0  # entropy bonus weight (loss -= entropy_coef * mean token entropy in nats)
    use_tis: bool = False  # truncated importance sampling with rollout logprobs
    tis_cap: float = 2.0  # TIS weight clamp (max of pi_old / pi_rollout)
    off_policy: str = "none"  # none | tis | decoupled_ppo: objective for stale samples (async modes)
    behav_weight_cap: float = 5.0  # decoupled PPO: tokens with pi_prox / pi_behav above this are dropped (AReaL)
    recompute_old_logprobs: bool = True  # recompute old logprobs with the trainer (else use rollout logprobs)

    def __post_init__(self) -> None:
        check_choice(
            "algorithm.advantage_estimator", self.advantage_estimator, ("grpo", "dr_grpo", "reinforce_pp", "gspo")
        )
        check_choice("algorithm.loss_reduction", self.loss_reduction, ("token_mean", "sample_mean", "token_sum_norm"))
        check_choice("algorithm.kl_type", self.kl_type, ("k1", "k2", "k3"))
        check_choice("algorithm.off_policy", self.off_policy, ("none", "tis", "decoupled_ppo"))
        if self.eps_clip <= 0 or self.eps_clip_high <= 0:
            raise ConfigError("algorithm.eps_clip and algorithm.eps_clip_high must be > 0")
        if self.kl_coef < 0:
            raise ConfigError(f"algorithm.kl_coef must be >= 0, got {self.kl_coef}")
        if self.loss_reduction == "token_sum_norm" and self.loss_norm_tokens_per_sample <= 0:
            raise ConfigError(
                "algorithm.loss_reduction=token_sum_norm needs algorithm.loss_norm_tokens_per_sample > 0, got "
                f"{self.loss_norm_tokens_per_sample}; set it to the max response length (Dr.GRPO)"
            )
        if self.tis_cap <= 0:
            raise ConfigError(f"algorithm.tis_cap must be > 0, got {self.tis_cap}")
        if self.behav_weight_cap <= 1:
            raise ConfigError(
                f"algorithm.behav_weight_cap must be > 1 (AReaL drops tokens above it), got {self.behav_weight_cap}"
            )
        if (self.use_tis or self.off_policy == "tis") and not self.recompute_old_logprobs:
            raise ConfigError(
                "algorithm.use_tis / algorithm.off_policy=tis weight tokens by pi_old / pi_rollout, but with "
                "algorithm.recompute_old_logprobs=false pi_old is the rollout logprobs and every weight is 1; set "
                "algorithm.recompute_old_logprobs=true"
            )
        if self.off_policy == "decoupled_ppo" and not self.recompute_old_logprobs:
            raise ConfigError(
                "algorithm.off_policy=decoupled_ppo needs algorithm.recompute_old_logprobs=true: the proximal "
                "policy is the trainer's recomputed logprobs"
            )


def policy_loss_name(cfg: AlgorithmConfig) -> str:
    """Name of the policy loss in `slime_rl.algorithms.POLICY_LOSSES` that `cfg` selects."""
    return "gspo" if cfg.advantage_estimator == "gspo" else "ppo_clip"
