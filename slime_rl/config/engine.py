"""Rollout engine and router settings (`engine` group)."""

from dataclasses import dataclass, field
from typing import Any

from slime_rl.config.checks import check_choice, check_min
from slime_rl.errors import ConfigError

ENGINE_KINDS = ("native", "sglang", "simulated")
# engine.* keys that SGLang gets as server arguments (engines/sglang.py), by SGLang ServerArgs name.
SGLANG_SERVER_ARGS = {
    "max_running_requests": "max_running_requests",
    "max_context_len": "context_length",
    "max_prefill_tokens": "max_prefill_tokens",
    "dtype": "dtype",
    "device": "device",
    "weight_version": "weight_version",
}
SGLANG_LAUNCH_ARGS = ("model_path", "host", "port")  # set from model.path, engine.host and a free port


@dataclass
class SimulatedEngineConfig:
    """`engine.simulated`: the cost model and response lengths of kind=simulated (engines/simulated/)."""

    # Cost model: a decode step over R sequences holding C context tokens in all takes a + b·R + c·C; each prefill
    # forward over P (padded) prompt tokens takes e + d·P more (a step's prefill is split into forwards as the native
    # engine splits it); each request that ends costs f (only from calibration_path's `request_ms`; default 0).
    decode_step_base_ms: float = 10.0  # a, milliseconds per decode step
    decode_row_ms: float = 0.2  # b, milliseconds per running sequence per decode step
    decode_context_token_us: float = 0.0  # c, microseconds per context token per decode step
    prefill_token_us: float = 20.0  # d, microseconds per prefilled prompt token
    prefill_base_ms: float = 0.0  # e, milliseconds per prefill forward
    # benchmarks/decode_step_cost.py output (JSON, or a list of them): replaces a, b, c, and d, e, f where it has
    # prefill_ms_per_token, prefill_base_ms, request_ms (benchmarks/simulator_fidelity.py writes all of them)
    calibration_path: str | None = None
    length_median: float = 64.0  # tokens: median response length (lognormal, capped at max_new_tokens)
    length_sigma: float = 1.0  # lognormal sigma of response lengths (0: every response has the median length)
    length_trace_path: str | None = None  # JSONL of {input_ids, response_lengths}: lengths replayed per prompt
    seed: int = 0  # seed of the generated token ids and lengths
    vocab_size: int = 0  # generated ids lie in [0, vocab_size); 0: the model's config.json (model.path)
    eos_token_id: int = -1  # id that ends a response (finish reason stop); -1: the model's config.json
    engines_per_process: int = 64  # engines one process (one engine host, one placement bundle) serves

    def __post_init__(self) -> None:
        for key in (
            "decode_step_base_ms",
            "decode_row_ms",
            "decode_context_token_us",
            "prefill_token_us",
            "prefill_base_ms",
        ):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"engine.simulated.{key} must be >= 0, got {getattr(self, key)}")
        if self.length_median < 1:
            raise ConfigError(f"engine.simulated.length_median must be >= 1 token, got {self.length_median}")
        if self.length_sigma < 0:
            raise ConfigError(f"engine.simulated.length_sigma must be >= 0, got {self.length_sigma}")
        check_min("engine.simulated.vocab_size", self.vocab_size, 0)
        check_min("engine.simulated.eos_token_id", self.eos_token_id, -1)
        check_min("engine.simulated.engines_per_process", self.engines_per_process, 1)


@dataclass
class EngineConfig:
    kind: str = "native"  # native | sglang | simulated: engine implementation behind the router
    num_engines: int = 1  # engine servers behind the router
    device: str = "cpu"  # cpu | cuda: where each engine runs (GPUs are reserved unless cpu)
    num_threads: int = 1  # logical CPUs per engine (its Ray bundle); the native engine runs this many torch threads
    max_running_requests: int = 64  # concurrent sequences per engine (continuous-batching slots)
    max_context_len: int = 2048  # prompt + response tokens per sequence (SGLang: --context-length)
    max_prefill_tokens: int = 4096  # prompt tokens an engine prefills per step
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16; auto: native fp32 on CPU, bf16 on CUDA; SGLang's own
    weight_version: str = "0"  # version engines report until the first weight update
    # Bind address of engines and router. null: each engine listens on its Ray node's IP and the router on the
    # driver node's, as a cluster whose engines run on other machines than the driver needs.
    host: str | None = "127.0.0.1"
    router_policy: str = "round_robin"  # round_robin | cache_aware | power_of_two | random
    startup_timeout_s: float = 300.0  # seconds to wait for an engine's /health
    request_timeout_s: float = 600.0  # seconds one HTTP request may take
    sglang: dict[str, Any] = field(default_factory=dict)  # kind=sglang: more ServerArgs, passed as --key value
    simulated: SimulatedEngineConfig = field(default_factory=SimulatedEngineConfig)  # kind=simulated only
    # Fault tolerance: the driver watches every engine (its process, and `/health_generate`); a dead or hung one is
    # taken out of the router, restarted, brought to the current weight version and put back. Off: the run fails
    # at the first weight publish that meets a dead engine.
    fault_tolerance: bool = True
    health_check_interval_s: float = 2.0  # seconds between two checks of one engine
    health_check_timeout_s: float = 30.0  # a `/health_generate` slower than this is a failed check
    health_check_failures: int = 3  # failed checks in a row before a hung engine is restarted (a dead one: at once)
    max_restarts: int = 5  # restarts per engine; past them it stays out and the others carry on

    def __post_init__(self) -> None:
        check_choice("engine.kind", self.kind, ENGINE_KINDS)
        check_choice("engine.device", self.device, ("cpu", "cuda"))
        check_choice("engine.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        check_choice(
            "engine.router_policy", self.router_policy, ("round_robin", "cache_aware", "power_of_two", "random")
        )
        for key in (
            "num_engines",
            "num_threads",
            "max_running_requests",
            "max_context_len",
            "max_prefill_tokens",
            "health_check_failures",
        ):
            check_min(f"engine.{key}", getattr(self, key), 1)
        check_min("engine.max_restarts", self.max_restarts, 0)
        for key in ("health_check_interval_s", "health_check_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"engine.{key} must be > 0 seconds, got {getattr(self, key)}")
        self._check_sglang_keys()

    def _check_sglang_keys(self) -> None:
        if self.sglang and self.kind != "sglang":
            raise ConfigError(
                f"engine.sglang.* ({', '.join(self.sglang)}) is passed to SGLang only; engine.kind={self.kind} "
                "would ignore it. Remove it or set engine.kind=sglang"
            )
        typed = {arg: key for key, arg in SGLANG_SERVER_ARGS.items()}
        for key in self.sglang:
            name = key.replace("-", "_")
            if name in SGLANG_LAUNCH_ARGS:
                raise ConfigError(
                    f"engine.sglang.{name} is set by slime-rl (model.path, engine.host and a free port); remove it"
                )
            if name in typed:
                raise ConfigError(
                    f"engine.sglang.{name} duplicates engine.{typed[name]}, which SGLang gets as --"
                    f"{name.replace('_', '-')}; set engine.{typed[name]} instead"
                )
