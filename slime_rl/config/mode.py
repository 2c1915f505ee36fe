"""Training loop settings (`mode` group)."""

from dataclasses import dataclass

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class ModeConfig:
    name: str = "sync"  # sync | one_step_async | fully_async
    max_staleness: int = 1  # fully_async: eta, versions a trained sample may lag the policy
    num_steps: int = 10  # training steps (one optimizer step each)
    log_interval: int = 1  # steps between metric records (eval steps and the last step are always recorded)
    batch_timeout_s: float = 600.0  # seconds the trainer waits for one step's groups before the run fails

    def __post_init__(self) -> None:
        check_choice("mode.name", self.name, ("sync", "one_step_async", "fully_async"))
        if self.max_staleness < 0:
            raise ConfigError(f"mode.max_staleness must be >= 0, got {self.max_staleness}")
        if self.num_steps < 0:
            raise ConfigError(f"mode.num_steps must be >= 0, got {self.num_steps}")
        if self.log_interval < 1:
            raise ConfigError(f"mode.log_interval must be >= 1 step, got {self.log_interval}")
        if self.batch_timeout_s <= 0:
            raise ConfigError(
                f"mode.batch_timeout_s must be > 0 seconds, got {self.batch_timeout_s}; use a value above the "
                "slowest rollout step, e.g. 600"
            )
