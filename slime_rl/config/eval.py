"""Held-out evaluation (`eval` node): greedy decoding on a fixed prompt set every `interval` steps."""

from dataclasses import dataclass

from slime_rl.config.checks import check_min


@dataclass
class EvalConfig:
    path: str | None = None  # JSONL/Parquet eval prompts (same keys as buffer.data); None = no eval
    interval: int = 0  # training steps between evals (0 = only before the first and after the last step)
    max_prompts: int = 256  # evaluate on at most this many prompts
    max_new_tokens: int | None = None  # None = rollout.max_new_tokens

    def __post_init__(self) -> None:
        check_min("eval.interval", self.interval, 0)
        check_min("eval.max_prompts", self.max_prompts, 1)
