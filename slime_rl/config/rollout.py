"""Rollout settings (`rollout` group): sampling, batch sizes, APRIL and rewards."""

from dataclasses import dataclass, field

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class RewardConfig:
    kind: str = "math"  # built-in rule name (see rollout.rewards), "custom" or "remote"
    path: str | None = None  # "module:function" for kind=custom
    url: str | None = None  # POST endpoint for kind=remote
    timeout_s: float = 30.0  # seconds per remote reward call


@dataclass
class RolloutConfig:
    rollout_batch_size: int = 8  # prompt groups per training step
    n_samples_per_prompt: int = 8  # group size for group-relative advantages
    max_new_tokens: int = 64  # response tokens per sample
    temperature: float = 1.0  # sampling temperature (1.0 = the policy's own distribution)
    top_p: float = 1.0  # nucleus sampling mass
    top_k: int = -1  # -1 = whole vocabulary
    max_concurrent_requests: int = 256  # requests in flight through the router
    use_april: bool = False  # APRIL: over-provision, abort at target, recycle partials
    over_sampling_batch_size: int | None = None  # groups in flight under APRIL; None = 2 x rollout_batch_size
    partial_policy: str = "recompute"  # recompute | mask_stale | tis: treatment of resumed stale tokens
    max_partial_staleness: int | None = None  # restart a partial spanning more versions than this; None = never
    dynamic_filter: str | None = None  # "nonzero_std" or "module:function"; None = keep every group
    seed: int = 1234  # sampling seed base
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        check_choice("rollout.partial_policy", self.partial_policy, ("recompute", "mask_stale", "tis"))
        for key in ("rollout_batch_size", "n_samples_per_prompt", "max_new_tokens", "max_concurrent_requests"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rollout.{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature < 0:
            raise ConfigError(f"rollout.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if self.over_sampling_batch_size is not None and self.over_sampling_batch_size < self.rollout_batch_size:
            raise ConfigError(
                f"rollout.over_sampling_batch_size={self.over_sampling_batch_size} is below "
                f"rollout.rollout_batch_size={self.rollout_batch_size}; APRIL needs at least the target in flight"
            )
