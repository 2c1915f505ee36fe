"""Supervised stage before RL (`sft` node): demonstrations from a JSONL file, trained on a fresh start only.

The row format and its checks live with the reader, `slime_rl/buffer/demonstrations.py`.
"""

from dataclasses import dataclass

from slime_rl.config.checks import check_min
from slime_rl.errors import ConfigError


@dataclass
class SFTConfig:
    path: str | None = None  # JSONL of demonstrations (prompt + response text, or token ids); None = no SFT
    steps: int = 0  # optimizer steps before RL, on a fresh start only (a resumed run skips them); 0 = none
    batch_size: int = 32  # demonstrations per optimizer step
    lr: float = 1e-5  # learning rate of the stage (RL then uses trainer.lr)
    seed: int | None = None  # shuffle seed (reshuffled every pass over the file); None = the run's seed

    def __post_init__(self) -> None:
        check_min("sft.steps", self.steps, 0)
        check_min("sft.batch_size", self.batch_size, 1)
        if self.lr <= 0:
            raise ConfigError(f"sft.lr must be > 0, got {self.lr}")
        if self.steps and not self.path:
            raise ConfigError(f"sft.steps={self.steps} needs sft.path=<demonstrations .jsonl>; or set sft.steps=0")
