"""Megatron trainer settings (`trainer` group)."""

from dataclasses import dataclass
from pathlib import Path

from slime_rl.config.checks import check_choice, check_min
from slime_rl.errors import ConfigError


@dataclass
class TrainerConfig:
    tensor_model_parallel_size: int = 1  # TP ranks
    pipeline_model_parallel_size: int = 1  # PP stages
    data_parallel_size: int = 1  # DP replicas; world size = tp * pp * dp
    expert_model_parallel_size: int = 1  # EP: an MoE layer's experts split over this many DP ranks (divides dp)
    micro_batch_size: int = 4  # most sequences per micro-batch; a batch is spread evenly over the fewest needed
    # Token budget per micro-batch (slime's dynamic batch size): samples sorted by length fill micro-batches of
    # at most this many input tokens, padding included, each padded to its own longest; None = fixed shapes.
    max_tokens_per_micro_batch: int | None = None
    num_steps_per_batch: int = 1  # optimizer steps per train() call; the batch is split into this many mini-batches
    logprob_temperature: float = 1.0  # temperature of trainer log-probs; keep equal to rollout.temperature
    seed: int = 1234  # torch seed of every rank
    lr: float = 1e-5  # Adam learning rate: the schedule's peak
    min_lr: float = 0.0  # learning rate the decay ends at (lr_decay_style other than constant)
    lr_decay_style: str = "constant"  # constant | linear | cosine | inverse-square-root (Megatron's schedules)
    lr_decay_steps: int | None = None  # optimizer steps to reach min_lr; None = every RL optimizer step of the run
    lr_warmup_steps: int = 0  # optimizer steps of linear warm-up from lr_warmup_init to lr
    lr_warmup_init: float = 0.0  # learning rate the warm-up starts from
    weight_decay: float = 0.0  # decoupled weight decay
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-8
    use_distributed_optimizer: bool = False  # shard Adam's state and fp32 main weights over the DP ranks (ZeRO-1)
    clip_grad: float = 1.0  # global grad-norm clip; 0 = off
    num_cpus_per_rank: int = 1  # logical CPUs per rank actor (torch threads on CPU)
    num_gpus_per_rank: int = 0  # GPUs per rank actor (1 on GPU clusters)
    save_interval: int = 10  # steps between checkpoints (and at the end); 0 = only at the end
    # Newest RL checkpoints kept on disk; 0 = keep every one. The SFT stage's checkpoint (step 0) always stays.
    max_checkpoints_to_keep: int = 2
    checkpoint_dir: str | None = None  # None = {run dir}/checkpoints
    load_checkpoint: bool = True  # resume from the latest checkpoint in checkpoint_dir when there is one
    # Another run's checkpoint (a step dir .../step_XXXXXXXX, or a checkpoint root with `latest`) this run starts
    # from when checkpoint_dir has nothing to resume: its weights, and Adam's state when load_optimizer is true.
    # Step, weight version and LR schedule start at 0 (Megatron's --finetune); None = start from model.path.
    init_checkpoint: str | None = None
    # Restore Adam's moments and step (on resume and from init_checkpoint); false = fresh moments (Megatron's
    # --no-load-optim), which also lets a checkpoint load with the other use_distributed_optimizer kind.
    load_optimizer: bool = True
    weight_sync: str = "distributed"  # distributed (torch.distributed broadcast) | disk (safetensors dir)
    # MiB per update call (slime's --update-weight-buffer-size default). Tensors that lie back to back in the
    # trainer's parameter buffer go flattened from where they lie; rank 0 packs the others into two buffers the
    # size of the largest such bucket, on its device; an engine receives a flattened bucket whole.
    weight_sync_bucket_mb: int = 512
    # How tensors that do not lie back to back travel (weight_sync=distributed): flattened_bucket (packed, one
    # broadcast of its bytes, SGLang's load_format) | per_tensor (one broadcast per tensor, no packing copy; then
    # every tensor goes so) | auto (packed over NCCL, per tensor over gloo unless the tensors are small:
    # trainer/weight_sync.py `send_format` says why).
    weight_sync_format: str = "auto"
    weight_publish_dir: str | None = None  # weight_sync=disk: newest published weights; None = {checkpoint_dir}/publish

    def __post_init__(self) -> None:
        for key in (
            "tensor_model_parallel_size",
            "pipeline_model_parallel_size",
            "data_parallel_size",
            "expert_model_parallel_size",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.data_parallel_size % self.expert_model_parallel_size:
            raise ConfigError(
                f"trainer.expert_model_parallel_size={self.expert_model_parallel_size} must divide "
                f"trainer.data_parallel_size={self.data_parallel_size}: expert ranks are DP ranks"
            )
        check_choice("trainer.weight_sync", self.weight_sync, ("distributed", "disk"))
        check_choice("trainer.weight_sync_format", self.weight_sync_format, ("auto", "flattened_bucket", "per_tensor"))
        if self.weight_sync == "disk" and not (self.weight_publish_dir or self.checkpoint_dir):
            raise ConfigError(
                "trainer.weight_sync=disk writes the published weights under trainer.weight_publish_dir or, when "
                "that is unset, {trainer.checkpoint_dir}/publish; both are unset. Set one of them (inside the run dir)"
            )
        for key in ("micro_batch_size", "num_steps_per_batch", "weight_sync_bucket_mb"):
            check_min(f"trainer.{key}", getattr(self, key), 1)
        check_min("trainer.clip_grad", self.clip_grad, 0.0)
        if self.max_tokens_per_micro_batch is not None:
            check_min("trainer.max_tokens_per_micro_batch", self.max_tokens_per_micro_batch, 1)
        check_min("trainer.save_interval", self.save_interval, 0)
        check_min("trainer.max_checkpoints_to_keep", self.max_checkpoints_to_keep, 0)
        check_choice(
            "trainer.lr_decay_style", self.lr_decay_style, ("constant", "linear", "cosine", "inverse-square-root")
        )
        check_min("trainer.lr_warmup_steps", self.lr_warmup_steps, 0)
        if not 0 <= self.min_lr <= self.lr or not 0 <= self.lr_warmup_init <= self.lr:
            raise ConfigError(
                f"trainer.min_lr={self.min_lr} and trainer.lr_warmup_init={self.lr_warmup_init} must lie in "
                f"[0, trainer.lr={self.lr}]"
            )
        if self.min_lr > 0 and self.lr_decay_style == "constant":
            raise ConfigError(
                f"trainer.min_lr={self.min_lr} takes effect only with a decaying schedule; set "
                "trainer.lr_decay_style=cosine (or linear, inverse-square-root) or drop trainer.min_lr"
            )
        if self.lr_decay_steps is not None and self.lr_decay_steps <= self.lr_warmup_steps:
            raise ConfigError(
                f"trainer.lr_decay_steps={self.lr_decay_steps} must exceed trainer.lr_warmup_steps="
                f"{self.lr_warmup_steps} (both count optimizer steps)"
            )
        if self.logprob_temperature <= 0:
            raise ConfigError(f"trainer.logprob_temperature must be > 0, got {self.logprob_temperature}")
        if self.init_checkpoint is not None:
            check_init_checkpoint(self.init_checkpoint)

    @property
    def world_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.data_parallel_size


def check_init_checkpoint(path: str) -> None:
    """`trainer.init_checkpoint` must be a step directory (with meta.json) or a checkpoint root (with `latest`)."""
    fix = "point it at another run's checkpoints/step_XXXXXXXX (or its checkpoints/ dir) or set it to null"
    where = Path(path)
    if not where.is_dir():
        raise ConfigError(f"trainer.init_checkpoint={path!r} does not exist; {fix}")
    if not (where / "meta.json").is_file() and not (where / "latest").is_file():
        raise ConfigError(f"trainer.init_checkpoint={path!r} is not a checkpoint (no meta.json, no `latest`); {fix}")
