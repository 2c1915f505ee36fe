"""The toy experiment (`toy` node, set by `experiment=toy`): a tiny model and a verifiable task made by our
own code, so RL runs and learns on a laptop CPU with nothing downloaded."""

from dataclasses import dataclass

from slime_rl.config.checks import check_choice, check_min
from slime_rl.errors import ConfigError


@dataclass
class ToyConfig:
    enabled: bool = False  # make the toy model and data before training (experiment=toy sets it)
    task: str = "addition"  # addition | reversal
    num_train_prompts: int = 4096  # rows of the generated training set
    num_eval_prompts: int = 128  # rows of the held-out eval set (a different seed)
    arch: str = "llama"  # llama | qwen2
    hidden_size: int = 64  # toy model width
    num_layers: int = 2  # toy model depth
    sft_steps: int = 0  # supervised warm-up steps before RL (0 = none)
    sft_batch_size: int = 32  # sequences per warm-up step
    sft_lr: float = 2e-3  # warm-up learning rate (RL then uses trainer.lr)
    sft_distractor_prob: float = 0.0  # fraction of sloppy warm-up demonstrations (a trailing '.' after the answer)

    def __post_init__(self) -> None:
        check_choice("toy.task", self.task, ("addition", "reversal"))
        check_choice("toy.arch", self.arch, ("llama", "qwen2"))
        check_min("toy.num_train_prompts", self.num_train_prompts, 1)
        check_min("toy.sft_steps", self.sft_steps, 0)
        if not 0.0 <= self.sft_distractor_prob <= 1.0:
            raise ConfigError(f"toy.sft_distractor_prob must be in [0, 1], got {self.sft_distractor_prob}")
