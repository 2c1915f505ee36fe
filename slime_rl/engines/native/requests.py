"""Request records shared by the engines that serve the SGLang protocol (native and simulated).

Owns what a scheduler and the HTTP layer (app.py) exchange: `EngineRequest` (one sequence and the sink its
updates go to), `RequestUpdate` (a snapshot of its output), the pause modes and SGLang's context-length
check. Torch-free, so that a server without a model imports it cheaply; scheduling lives in the schedulers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from slime_rl.engines.protocol import FinishReason, SamplingParams

PAUSE_MODES = ("abort", "retract", "in_place")


def context_error(num_input: int, max_new_tokens: int, context_len: int) -> str | None:
    """SGLang's HTTP 400 message for a request that does not fit `context_len` tokens; None if it fits.

    Same checks and words as SGLang without `--allow-auto-truncate` (REFERENCE.md §1): the input must be
    shorter than the context, and input plus `max_new_tokens` must not exceed it.
    """
    if num_input >= context_len:
        return f"The input ({num_input} tokens) is longer than the model's context length ({context_len} tokens)."
    if num_input + max_new_tokens > context_len:
        return (
            f"Requested token count exceeds the model's maximum context length of {context_len} tokens. "
            f"You requested a total of {num_input + max_new_tokens} tokens: {num_input} tokens from the input "
            f"messages and {max_new_tokens} tokens for the completion. Please reduce the number of tokens in the "
            "input messages or the completion to fit within the limit."
        )
    return None


@dataclass(slots=True, kw_only=True)
class RequestUpdate:
    """A snapshot of one request's output; `finish_reason` is set on the final update only."""

    output_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason | None
    weight_version: str
    # Per-request timing that SGLang reports with --enable-metrics (queue_time, first_token_latency, ...),
    # merged into meta_info as is; both engines here always measure the first two.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(eq=False, kw_only=True)
class EngineRequest:
    """One sequence being generated. `sink` receives updates (every token if `stream`, else only the last)."""

    rid: str
    input_ids: list[int]
    params: SamplingParams
    sink: Callable[[RequestUpdate], None]
    stream: bool = False
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    cache_len: int = 0  # tokens whose K/V are in this request's slot
    stop_ids: frozenset[int] = frozenset()  # tokens that end it (set by the scheduler on submit)
    received: float = field(default_factory=time.monotonic)  # when the HTTP layer handed it over
    # SGLang's --enable-metrics timings, seconds since `received`: `queue_time` until its first prefill,
    # `first_token_latency` until its first token (a retracted request keeps its first values).
    metrics: dict[str, float] = field(default_factory=dict)
