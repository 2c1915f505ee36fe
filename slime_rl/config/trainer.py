"""Megatron trainer settings (`trainer` group)."""

from dataclasses import dataclass

from slime_rl.errors import ConfigError


@dataclass
class TrainerConfig:
    tensor_model_parallel_size: int = 1  # TP ranks
    pipeline_model_parallel_size: int = 1  # PP stages
    data_parallel_size: int = 1  # DP replicas; world size = tp * pp * dp
    micro_batch_size: int = 4  # sequences per micro-batch
    lr: float = 1e-5  # Adam learning rate
    min_lr: float = 0.0  # floor of the decay schedule
    weight_decay: float = 0.0  # decoupled weight decay
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    clip_grad: float = 1.0  # global grad-norm clip; 0 = off
    num_cpus_per_rank: int = 1  # logical CPUs per rank actor (torch threads on CPU)
    num_gpus_per_rank: int = 0  # GPUs per rank actor (1 on GPU clusters)
    save_interval: int = 0  # steps between checkpoints; 0 = only at the end
    checkpoint_dir: str | None = None  # None = {run dir}/checkpoints
    load_checkpoint: bool = True  # resume from the latest checkpoint in checkpoint_dir when there is one
    weight_sync: str = "distributed"  # distributed (torch.distributed broadcast) | disk (safetensors dir)
    weight_sync_bucket_mb: int = 64  # MiB per broadcast bucket

    def __post_init__(self) -> None:
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "data_parallel_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.weight_sync not in ("distributed", "disk"):
            raise ConfigError(f"trainer.weight_sync={self.weight_sync!r} is unknown; choose distributed or disk")

    @property
    def world_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.data_parallel_size
