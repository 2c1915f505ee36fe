import pytest

from slime_rl.config import WatchdogConfig
from slime_rl.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0.0}, "watchdog.timeout_s must be > 0"),
        ({"timeout_s": 5.0, "check_interval_s": 6.0}, "watchdog.check_interval_s must be in"),
        ({"check_interval_s": 0.0}, "watchdog.check_interval_s must be in"),
        ({"on_hang": "kill"}, "watchdog.on_hang='kill' is unknown"),
    ],
)
def test_watchdog_config_rejects_out_of_range_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        WatchdogConfig(**kwargs)
