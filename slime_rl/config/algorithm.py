"""RL objective settings (`algorithm` group): advantages, policy loss, KL and off-policy corrections."""

from dataclasses import dataclass

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class AlgorithmConfig:
    advantage_estimator: str = "grpo"  # grpo | dr_grpo | reinforce_pp | gspo
    normalize_std: bool = True  # GRPO: divide group-centred rewards by the group std
    loss_reduction: str = "token_mean"  # token_mean | sample_mean
    eps_clip: float = 0.2  # PPO clip below 1 (epsilon_low)
    eps_clip_high: float = 0.28  # PPO clip above 1 (DAPO clip-higher)
    kl_coef: float = 0.0  # KL loss weight against the reference policy; 0 = no reference model
    kl_type: str = "k3"  # k1 | k2 | k3 estimator of KL(pi || ref)
    entropy_coef: float = 0.0  # entropy bonus weight
    use_tis: bool = False  # truncated importance sampling with rollout logprobs
    tis_cap: float = 2.0  # TIS weight clamp
    off_policy: str = "none"  # none | tis | decoupled_ppo: objective for stale samples (async modes)
    behav_weight_cap: float = 5.0  # decoupled PPO: cap of pi_prox / pi_behav
    recompute_old_logprobs: bool = True  # recompute old logprobs with the trainer (else use rollout logprobs)

    def __post_init__(self) -> None:
        check_choice(
            "algorithm.advantage_estimator", self.advantage_estimator, ("grpo", "dr_grpo", "reinforce_pp", "gspo")
        )
        check_choice("algorithm.loss_reduction", self.loss_reduction, ("token_mean", "sample_mean"))
        check_choice("algorithm.kl_type", self.kl_type, ("k1", "k2", "k3"))
        check_choice("algorithm.off_policy", self.off_policy, ("none", "tis", "decoupled_ppo"))
        if self.eps_clip <= 0 or self.eps_clip_high <= 0:
            raise ConfigError("algorithm.eps_clip and algorithm.eps_clip_high must be > 0")
        if self.kl_coef < 0:
            raise ConfigError(f"algorithm.kl_coef must be >= 0, got {self.kl_coef}")
