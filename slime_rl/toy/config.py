"""The toy experiment's own settings, `prepare.args` of `experiment=toy` (read by `slime_rl.toy.experiment`).

The library never reads them: to it they are the untyped arguments of a `prepare` hook. The toy types and
checks them here, naming each key by its full path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from slime_rl.config.checks import check_choice, check_min
from slime_rl.errors import ConfigError
from slime_rl.toy.tasks import ARITHMETIC_TASKS, TASKS

KEY = "prepare.args"  # where experiment=toy keeps these settings


@dataclass
class ToyConfig:
    task: str = "addition"  # addition | reversal | multiplication (the reward is slime_rl.toy.rewards:<task>)
    num_train_prompts: int = 4096  # rows of the generated training set
    num_eval_prompts: int = 128  # rows of the held-out eval set (a different seed)
    arch: str = "llama"  # llama | qwen2
    hidden_size: int = 64  # toy model width
    num_layers: int = 2  # toy model depth
    distractor_prob: float = 0.0  # fraction of sloppy SFT demonstrations (a trailing '.' after the answer)
    # With rollout.generate.kind=multi_turn demonstrations answer in the answer tags; this fraction of them
    # first asks the calculator (tools.registered must hold one).
    tool_demo_prob: float = 0.0
    # Fraction of train and eval prompts with a missing operand, labelled rollout.reward.reliability.abstain_answer
    # (addition and multiplication only).
    unanswerable_prob: float = 0.0
    abstain_demo_prob: float = 0.0  # fraction of unanswerable prompts' demonstrations that abstain; others guess

    def __post_init__(self) -> None:
        check_choice(f"{KEY}.task", self.task, TASKS)
        check_choice(f"{KEY}.arch", self.arch, ("llama", "qwen2"))
        check_min(f"{KEY}.num_train_prompts", self.num_train_prompts, 1)
        check_min(f"{KEY}.num_eval_prompts", self.num_eval_prompts, 1)
        for key in ("distractor_prob", "tool_demo_prob", "unanswerable_prob", "abstain_demo_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{KEY}.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.unanswerable_prob and self.task not in ARITHMETIC_TASKS:
            raise ConfigError(
                f"{KEY}.unanswerable_prob={self.unanswerable_prob} needs an arithmetic task {list(ARITHMETIC_TASKS)}, "
                f"got {KEY}.task={self.task!r}"
            )


def toy_config(args: dict[str, Any]) -> ToyConfig:
    """`args` (the `prepare.args` node) as a checked `ToyConfig`; an unknown key or a wrong type is a ConfigError."""
    names = {f.name: f for f in dataclasses.fields(ToyConfig)}
    if unknown := sorted(set(args) - set(names)):
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{KEY}.{k}' for k in unknown)} of experiment=toy; choose from {sorted(names)}"
        )
    for key, value in args.items():
        expected = {"str": str, "int": int, "float": (int, float)}[str(names[key].type)]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ConfigError(f"{KEY}.{key}={value!r} must be a {names[key].type}")
    return ToyConfig(**args)
