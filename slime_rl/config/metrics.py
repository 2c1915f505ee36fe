"""Metric sinks (`metrics` node): `metrics.jsonl` is always written; TensorBoard and Weights & Biases are optional."""

from dataclasses import dataclass

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError

WANDB_MODES = ("offline", "online")


@dataclass
class MetricsConfig:
    tensorboard: bool = True  # TensorBoard scalars in {run_dir}/tensorboard
    wandb: bool = False  # a Weights & Biases run (needs `pip install 'slime-rl[wandb]'`)
    wandb_project: str = "slime-rl"  # W&B project name
    wandb_entity: str | None = None  # W&B team or user; None = the logged-in account's default
    wandb_mode: str = "offline"  # offline: files only, no network or login (upload later with `wandb sync`); online
    wandb_dir: str | None = None  # folder W&B writes its `wandb/` run folders under; None = the run dir

    def __post_init__(self) -> None:
        check_choice("metrics.wandb_mode", self.wandb_mode, WANDB_MODES)
        if not self.wandb_project:
            raise ConfigError("metrics.wandb_project must not be empty")
