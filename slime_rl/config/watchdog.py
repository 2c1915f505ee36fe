"""Hang watchdog (`watchdog` node): when nothing progresses for `timeout_s`, dump every stack and fail or wait."""

from dataclasses import dataclass

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError

ON_HANG = ("fail", "wait")


@dataclass
class WatchdogConfig:
    enabled: bool = True  # watch the run for stalls
    timeout_s: float = 600.0  # seconds without a step, a generated token or a buffer event before a hang is declared
    check_interval_s: float = 10.0  # seconds between progress checks (at most timeout_s)
    on_hang: str = "fail"  # fail: end the run with an error after the dump; wait: dump again every timeout_s

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"watchdog.timeout_s must be > 0, got {self.timeout_s}")
        if not 0 < self.check_interval_s <= self.timeout_s:
            raise ConfigError(
                f"watchdog.check_interval_s must be in (0, watchdog.timeout_s={self.timeout_s}], "
                f"got {self.check_interval_s}"
            )
        check_choice("watchdog.on_hang", self.on_hang, ON_HANG)
