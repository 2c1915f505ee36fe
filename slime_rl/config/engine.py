"""Rollout engine and router settings (`engine` group)."""

from dataclasses import dataclass, field
from typing import Any

from slime_rl.config.checks import check_choice
from slime_rl.errors import ConfigError


@dataclass
class EngineConfig:
    kind: str = "native"  # native | sglang | simulated: engine implementation behind the router
    num_engines: int = 1  # engine servers behind the router
    device: str = "cpu"  # cpu | cuda (native engine)
    num_threads: int = 1  # torch threads per native engine on CPU
    max_running_requests: int = 64  # concurrent sequences per engine (continuous-batching slots)
    max_context_len: int = 2048  # prompt + response tokens per sequence
    max_prefill_tokens: int = 4096  # prompt tokens the native engine prefills per step
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (native engine; auto = fp32 on CPU, bf16 on CUDA)
    weight_version: str = "0"  # version engines report until the first weight update
    host: str = "127.0.0.1"  # bind address of engines and router
    router_policy: str = "round_robin"  # round_robin | cache_aware | power_of_two | random
    startup_timeout_s: float = 300.0  # seconds to wait for an engine's /health
    request_timeout_s: float = 600.0  # seconds one HTTP request may take
    sglang: dict[str, Any] = field(default_factory=dict)  # passed through to sglang ServerArgs as --key value

    def __post_init__(self) -> None:
        check_choice("engine.kind", self.kind, ("native", "sglang", "simulated"))
        check_choice("engine.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        check_choice(
            "engine.router_policy", self.router_policy, ("round_robin", "cache_aware", "power_of_two", "random")
        )
        if self.num_engines < 1:
            raise ConfigError(f"engine.num_engines must be >= 1, got {self.num_engines}")
        if self.max_running_requests < 1:
            raise ConfigError(f"engine.max_running_requests must be >= 1, got {self.max_running_requests}")
