"""The root config, its Hydra registration and loading.

The dataclasses are the schema: YAML files under `configs/` only set values, and a key the schema does
not have is an error (Hydra struct mode). `load_config` runs every `__post_init__` on the final values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from slime_rl.config.algorithm import AlgorithmConfig
from slime_rl.config.buffer import BufferConfig
from slime_rl.config.cluster import ClusterConfig
from slime_rl.config.engine import EngineConfig
from slime_rl.config.eval import EvalConfig
from slime_rl.config.metrics import MetricsConfig
from slime_rl.config.mode import ModeConfig
from slime_rl.config.model import ModelConfig
from slime_rl.config.prepare import PrepareConfig
from slime_rl.config.profile import ProfileConfig
from slime_rl.config.rollout import RolloutConfig
from slime_rl.config.sft import SFTConfig
from slime_rl.config.tools import ToolsConfig
from slime_rl.config.trainer import TrainerConfig
from slime_rl.config.watchdog import WatchdogConfig
from slime_rl.errors import ConfigError

SCHEMA_NAME = "slime_rl_schema"
GROUPS = {
    "model": ModelConfig,
    "engine": EngineConfig,
    "rollout": RolloutConfig,
    "trainer": TrainerConfig,
    "algorithm": AlgorithmConfig,
    "buffer": BufferConfig,
    "cluster": ClusterConfig,
    "mode": ModeConfig,
}


@dataclass
class SlimeRLConfig:
    name: str = "run"  # run name: output folder and default buffer namespace
    output_dir: str = "outputs"  # runs are written to {output_dir}/{name}
    seed: int = 1234  # global seed (data order, init, sampling)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mode: ModeConfig = field(default_factory=ModeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)  # supervised stage before RL (fresh starts only)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)  # an experiment's setup hook (experiment=toy)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)  # tool use of rollout.generate.kind=multi_turn

    def __post_init__(self) -> None:
        if self.trainer.micro_batch_size > self.rollout.rollout_batch_size * self.rollout.n_samples_per_prompt:
            raise ConfigError(
                f"trainer.micro_batch_size={self.trainer.micro_batch_size} exceeds the samples of one step "
                f"(rollout.rollout_batch_size * rollout.n_samples_per_prompt = "
                f"{self.rollout.rollout_batch_size * self.rollout.n_samples_per_prompt}); lower it"
            )
        if (
            self.trainer.weight_sync == "distributed"
            and self.trainer.num_gpus_per_rank > 0
            and self.engine.kind == "native"
            and self.engine.device == "cpu"
        ):
            raise ConfigError(
                "trainer.weight_sync=distributed broadcasts over NCCL from GPU trainer ranks "
                f"(trainer.num_gpus_per_rank={self.trainer.num_gpus_per_rank}), which a native engine on "
                "engine.device=cpu cannot join; set engine.device=cuda or trainer.weight_sync=disk"
            )
        if self.profile.sglang_profiler_steps and self.engine.kind == "simulated":
            raise ConfigError(
                "profile.sglang_profiler_steps profiles the engines' model steps, and engine.kind=simulated runs "
                "none; leave profile.sglang_profiler_steps empty or choose engine=native|sglang"
            )
        corrects_with_rollout_logprobs = self.algorithm.use_tis or self.algorithm.off_policy in ("tis", "decoupled_ppo")
        if self.rollout.partial_policy == "tis" and not corrects_with_rollout_logprobs:
            raise ConfigError(
                "rollout.partial_policy=tis corrects resumed stale tokens with the rollout logprobs, but "
                f"algorithm.use_tis={self.algorithm.use_tis} and algorithm.off_policy={self.algorithm.off_policy!r}; "
                "set algorithm.use_tis=true"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def config_dir() -> Path:
    """The `configs/` tree: $SLIME_RL_CONFIG_DIR, else the wheel's copy inside the package, else the checkout's."""
    if "SLIME_RL_CONFIG_DIR" in os.environ:
        candidates = [Path(os.environ["SLIME_RL_CONFIG_DIR"])]
    else:
        package = Path(__file__).resolve().parents[1]
        candidates = [package / "configs", package.parent / "configs"]  # installed wheel, source checkout
    for path in candidates:
        if (path / "config.yaml").is_file():
            return path
    searched = " or ".join(map(str, candidates))
    raise ConfigError(f"no config.yaml in {searched}; set SLIME_RL_CONFIG_DIR to the slime-rl configs/ folder")


def register_configs() -> None:
    """Register the schema and one typed `base` node per group. Called by the CLI, never at import."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=SlimeRLConfig)
    for group, node in GROUPS.items():
        store.store(group=group, name="base", node=node)


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys of `node` that its schema dataclass does not have (dict-typed fields take any key).

    Hydra's `+key=value` adds a key even under struct mode, and `OmegaConf.to_object` then drops it in
    silence: a setting accepted that does nothing.
    """
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []
    names = {f.name for f in dataclasses.fields(schema)}
    found = []
    for key in node:
        if key not in names:
            found.append(f"{prefix}{key}")
        elif isinstance(child := node._get_node(key), DictConfig):
            found += unknown_keys(child, f"{prefix}{key}.")
    return found


def to_config(cfg: DictConfig) -> SlimeRLConfig:
    """Turn a composed DictConfig into the typed config, running every validation."""
    if unknown := unknown_keys(cfg):
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}: the schema has no such setting, so it would do nothing; "
            "check the spelling (`slime-rl train --cfg job` prints every key)"
        )
    try:
        config = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as err:  # OmegaConf's validation errors carry the full key and value
        raise ConfigError(f"invalid config: {err}") from err
    if not isinstance(config, SlimeRLConfig):
        raise ConfigError(f"config root must be {SCHEMA_NAME}, got {type(config).__name__}")
    return config


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose `configs/config.yaml` with command-line style overrides (for tests and tools)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides or [])
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{err}\nSee `slime-rl train --cfg job` for the full config tree.") from err


def load_config(overrides: list[str] | None = None) -> SlimeRLConfig:
    return to_config(compose_config(overrides))
