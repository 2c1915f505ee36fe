"""Training loop settings (`mode` group)."""

from dataclasses import dataclass

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class ModeConfig:
    name: str = "sync"  # sync | one_step_async | fully_async
    max_staleness: int = 1  # fully_async: eta, versions a trained sample may lag the policy
    num_steps: int = 10  # training steps (one optimizer step each)
    log_interval: int = 1  # steps between metric records

    def __post_init__(self) -> None:
        check_choice("mode.name", self.name, ("sync", "one_step_async", "fully_async"))
        if self.max_staleness < 0:
            raise ConfigError(f"mode.max_staleness must be >= 0, got {self.max_staleness}")
        if self.num_steps < 0:
            raise ConfigError(f"mode.num_steps must be >= 0, got {self.num_steps}")
