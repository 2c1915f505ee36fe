"""Validation helpers shared by the config dataclasses (OmegaConf 2.3 cannot type-check `Literal`)."""

from collections.abc import Collection

from slime_rl.errors import ConfigError


def check_choice(key: str, value: str, choices: Collection[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is unknown; choose one of {sorted(choices)}")


def check_min(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
