"""The generate hook (`rollout.generate`): the plug-in point that turns one sample's prompt into its response.

A hook is `async def fn(ctx: GenerateContext, sample: Sample) -> None`. It is called once per unfinished
sample per round of requests (inside one of the manager's request slots, tool calls included) and fills the
sample in place:
- `response_ids`, `rollout_logprobs`, `loss_mask` grow together (`Sample.append_tokens` for the policy's
  tokens: mask 1, the engine's log-probs, a weight span with the version the engine reported;
  `Sample.append_observation` for anything else, such as a tool's result: mask 0, log-prob 0.0, no span);
- `status`: `completed` / `truncated` when done, `aborted` when it stopped early and must be resumed,
  `failed` (via `Sample.fail`) when it can never succeed;
- `metadata`: per-turn records and whatever the reward needs (msgpack values only; a hook's own state goes
  under `metadata["hook"]`, which a restart from the prompt clears).

A hook must be resumable: called again on a sample it left unfinished (an APRIL abort, a weight update,
an engine that failed), it continues from the sample's tokens and metadata alone, never from memory. It
sends no request once `ctx.stop` is set. Engine failures other than a refused request (HTTP 4xx, which
fails the sample) propagate as `EngineError`; the caller then resends or recycles the group.

The built-in hooks are `single_turn` (rollout/generate.py) and `multi_turn` (rollout/multi_turn.py);
`contract_errors` states the invariants every hook's samples satisfy, and the manager checks a custom
hook's samples with it (a violation fails that sample rather than train on it).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from slime_rl.config.rollout import GenerateConfig
from slime_rl.config.tools import ToolsConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import SamplingParams
from slime_rl.errors import ConfigError
from slime_rl.plugins import load_plugin
from slime_rl.rollout.tools.registry import ToolRegistry
from slime_rl.types import Sample, Status

LOGPROB_TOLERANCE = 1e-4  # a log-prob above this is no log-prob (float error can put a sure token's just above 0)
_BUILTIN_HOOKS = {
    "single_turn": "slime_rl.rollout.generate:single_turn",
    "multi_turn": "slime_rl.rollout.multi_turn:multi_turn",
}


class TextCodec(Protocol):
    """Text <-> token ids of the policy's tokenizer, without special tokens added on encode."""

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class TokenizerCodec:
    """`TextCodec` over a Hugging Face tokenizer: no BOS on encode, special tokens skipped on decode."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


@dataclass(slots=True, kw_only=True)
class GenerateContext:
    """What a hook gets for one round of requests. Hooks read it and never change it."""

    client: EngineClient  # the router (or one engine): `await client.generate(GenerateRequest)`
    sampling: SamplingParams  # the run's sampling; a hook replaces max_new_tokens / seed per request
    max_new_tokens: int  # response tokens per sample, all turns and tool results together
    version: int  # weight version of this round: the span version when the engine reports "default"
    seed: int | None = None  # sampling seed base (`generate.request_seed`); None = the engine's generator
    stop: asyncio.Event | None = None  # set: send no more requests, leave the sample resumable (`aborted`)
    codec: TextCodec | None = None  # the tokenizer, for hooks that read or write text
    tools: ToolRegistry | None = None  # `await tools.call(name, arguments) -> ToolResult` (never raises)
    tools_cfg: ToolsConfig | None = None  # the tagged call format and limits of `tools`
    max_turns: int = 1  # policy turns per sample (rollout.generate.max_turns)

    @property
    def is_stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()


class GenerateHook(Protocol):
    """Fills one sample through `ctx.client` (see the module docstring for the contract)."""

    async def __call__(self, ctx: GenerateContext, sample: Sample) -> None: ...


@dataclass(slots=True, kw_only=True)
class Generation:
    """The run's hook and what it needs besides a round's requests (fixed for the run)."""

    hook: GenerateHook
    codec: TextCodec | None = None
    tools: ToolRegistry | None = None
    tools_cfg: ToolsConfig | None = None
    max_turns: int = 1
    check_contract: bool = False  # check each returned sample with `contract_errors` (custom hooks)

    def context(
        self,
        client: EngineClient,
        sampling: SamplingParams,
        *,
        max_new_tokens: int,
        version: int,
        seed: int | None,
        stop: asyncio.Event | None,
    ) -> GenerateContext:
        return GenerateContext(
            client=client,
            sampling=sampling,
            max_new_tokens=max_new_tokens,
            version=version,
            seed=seed,
            stop=stop,
            codec=self.codec,
            tools=self.tools,
            tools_cfg=self.tools_cfg,
            max_turns=self.max_turns,
        )


def resolve_hook(cfg: GenerateConfig) -> GenerateHook:
    """The hook `rollout.generate` names; a one-line `ConfigError` when a custom path cannot be used."""
    if cfg.kind != "custom":
        module_name, _, attr = _BUILTIN_HOOKS[cfg.kind].partition(":")
        return getattr(importlib.import_module(module_name), attr)
    key = f"rollout.generate.path={cfg.path!r}"
    fn = load_plugin("rollout.generate.path", cfg.path)
    attr = (cfg.path or "").partition(":")[2]
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(
            f"{key} is not an async function; define `async def {attr}(ctx: GenerateContext, sample: Sample) -> None`"
        )
    return fn


def make_generation(
    cfg: GenerateConfig, *, codec: TextCodec | None, tools: ToolRegistry | None, tools_cfg: ToolsConfig | None
) -> Generation:
    """The `Generation` of `rollout.generate`: its hook with the run's tokenizer and tools."""
    return Generation(
        hook=resolve_hook(cfg),
        codec=codec,
        tools=tools,
        tools_cfg=tools_cfg,
        max_turns=cfg.max_turns,
        check_contract=cfg.kind == "custom",
    )


def contract_errors(sample: Sample, max_new_tokens: int) -> list[str]:
    """What `sample` breaks of the hook contract; empty when it keeps it.

    Every sample: the per-token arrays have one entry per response token and at most `max_new_tokens`;
    the loss mask is 0 or 1. A sample that did not fail: weight spans are ordered, disjoint and cover
    exactly the tokens with mask 1 (the policy's); log-probs are finite and <= 0 (within
    `LOGPROB_TOLERANCE`) under mask 1 and exactly
    0.0 under mask 0.
    """
    n = len(sample.response_ids)
    if len(sample.rollout_logprobs) != n or len(sample.loss_mask) != n:
        return [
            f"response_ids ({n}), rollout_logprobs ({len(sample.rollout_logprobs)}) and loss_mask "
            f"({len(sample.loss_mask)}) differ in length"
        ]
    errors = []
    if n > max_new_tokens:
        errors.append(f"{n} response tokens exceed max_new_tokens={max_new_tokens}")
    if np.any(sample.loss_mask > 1):
        errors.append("loss_mask holds values other than 0 and 1")
    if sample.status is Status.FAILED:
        return errors
    covered = np.zeros(n, np.uint8)
    last_end = 0
    for version, start, end in sample.weight_spans:
        if not last_end <= start < end <= n:
            errors.append(f"weight span ({version}, {start}, {end}) is out of order or outside [0, {n})")
            return errors
        covered[start:end] = 1
        last_end = end
    if not np.array_equal(covered, sample.loss_mask):
        errors.append("loss_mask is not 1 exactly on the tokens of the weight spans (the policy's tokens)")
    policy = sample.loss_mask == 1
    logprobs = sample.rollout_logprobs
    if not np.all(np.isfinite(logprobs[policy])) or np.any(logprobs[policy] > LOGPROB_TOLERANCE):
        errors.append("rollout_logprobs are not finite and <= 0 on the policy's tokens")
    if np.any(logprobs[~policy] != 0.0):
        errors.append("rollout_logprobs are not 0.0 on tokens with loss_mask 0")
    return errors
