"""An experiment's setup hook (`prepare` node): run before a run's services start, e.g. to make its data.

The hook is `prepare.path = "package.module:function"`, called as `fn(cfg: SlimeRLConfig) -> None` on every
start, fresh or resumed, so it must keep what exists (be idempotent). `prepare.args` holds the hook's own
settings; the hook validates them (`experiment=toy`: `slime_rl.toy.experiment:prepare`, typed by
`slime_rl.toy.config.ToyConfig`). Resolved once, by the driver (`run_prepare_hook`).
"""

from dataclasses import dataclass, field
from typing import Any

from slime_rl.errors import ConfigError


@dataclass
class PrepareConfig:
    path: str | None = None  # "package.module:function" called with the config before a run; None = none
    args: dict[str, Any] = field(default_factory=dict)  # the hook's own settings, validated by the hook

    def __post_init__(self) -> None:
        if self.path is not None and (self.path.count(":") != 1 or not all(self.path.split(":"))):
            raise ConfigError(f"prepare.path={self.path!r} must look like 'package.module:function'")
