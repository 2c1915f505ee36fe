"""Rollout profiler settings (`profile` group; `slime-rl profile-rollout`)."""

from dataclasses import dataclass, field

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class ProfileConfig:
    num_steps: int = 3  # rollout steps profiled (each publishes rollout.rollout_batch_size groups)
    republish_every: int = 0  # steps between version-only weight updates (/update_weight_version); 0 = never
    # between_steps: the update runs before the step, engines idle. in_flight: it interrupts the step halfway (by
    # the previous step's time) as an SGLang-style pause: /pause_generation retract, update, /continue_generation.
    republish_mode: str = "between_steps"
    load_poll_interval_s: float = 0.1  # seconds between polls of each engine's /v1/loads (utilisation, bubbles)
    tail_fraction: float = 0.5  # decode counts as long-tail wait while requests in flight < this x the step's peak
    # Each entry is one setting of a sweep: space-separated overrides on top of the command line's, e.g.
    # ["rollout=april", "rollout=default"]. Empty = profile the command line's config once.
    sweep: list[str] = field(default_factory=list)
    # Steps (0-based) during which every engine runs its own profiler (SGLang's /start_profile .. /stop_profile,
    # a torch profiler in the native engine); traces go to {run dir}/engine_profiles/step_{k}/ on each engine's node.
    sglang_profiler_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ConfigError(f"profile.num_steps must be >= 1, got {self.num_steps}")
        if self.republish_every < 0:
            raise ConfigError(f"profile.republish_every must be >= 0 steps (0 = never), got {self.republish_every}")
        check_choice("profile.republish_mode", self.republish_mode, ("between_steps", "in_flight"))
        if self.load_poll_interval_s <= 0:
            raise ConfigError(f"profile.load_poll_interval_s must be > 0 seconds, got {self.load_poll_interval_s}")
        outside = [k for k in self.sglang_profiler_steps if not 0 <= k < self.num_steps]
        if outside:
            raise ConfigError(
                f"profile.sglang_profiler_steps has steps {outside} outside 0..{self.num_steps - 1} "
                "(profile.num_steps); list steps the run profiles"
            )
        if not 0.0 < self.tail_fraction <= 1.0:
            raise ConfigError(f"profile.tail_fraction must be in (0, 1], got {self.tail_fraction}")
