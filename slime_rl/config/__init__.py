"""Typed config schema (the source of truth), Hydra registration and loading."""

from slime_rl.config.algorithm import AlgorithmConfig
from slime_rl.config.buffer import BufferConfig, DataConfig
from slime_rl.config.cluster import ClusterConfig
from slime_rl.config.engine import EngineConfig
from slime_rl.config.eval import EvalConfig
from slime_rl.config.mode import ModeConfig
from slime_rl.config.model import ModelConfig
from slime_rl.config.prepare import PrepareConfig
from slime_rl.config.rollout import GenerateConfig, RewardConfig, RolloutConfig
from slime_rl.config.root import SlimeRLConfig, compose_config, config_dir, load_config, register_configs, to_config
from slime_rl.config.sft import SFTConfig
from slime_rl.config.tools import ToolsConfig
from slime_rl.config.trainer import TrainerConfig
from slime_rl.config.watchdog import WatchdogConfig

__all__ = [
    "AlgorithmConfig",
    "BufferConfig",
    "ClusterConfig",
    "DataConfig",
    "EngineConfig",
    "EvalConfig",
    "GenerateConfig",
    "ModeConfig",
    "ModelConfig",
    "PrepareConfig",
    "RewardConfig",
    "RolloutConfig",
    "SFTConfig",
    "SlimeRLConfig",
    "ToolsConfig",
    "TrainerConfig",
    "WatchdogConfig",
    "compose_config",
    "config_dir",
    "load_config",
    "register_configs",
    "to_config",
]
