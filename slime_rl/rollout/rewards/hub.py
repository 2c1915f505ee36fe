"""The reward hub: resolves `rollout.reward` once into one batched async scorer.

Kinds:
- a built-in rule: `math` (boxed / exact answer);
- `custom`: `rollout.reward.path = "module:function"`. The function is sync or async and is either
  per sample, `fn(sample, response) -> float`, or batched, `fn(samples, responses) -> list[float]`,
  marked with the `batched_reward` decorator. The `answer_extractor(extract)` decorator tells
  `kind=reliability` how to find the final answer in a response (default: the `math` extractor).
  Experiments bring their rules this way, e.g. the toy's `slime_rl.toy.rewards:addition`;
- `remote`: POST `{"samples": [{"uid", "prompt_ids", "response", "label", "metadata"}]}` to
  `rollout.reward.url`, answered by `{"rewards": [float, ...]}` in the same order;
- `reliability`: wraps any of the above (`rollout.reward.reliability.inner`) into correct / abstained /
  wrong weights (rewards/reliability.py), extracting answers with the inner reward's extractor.

What a reward scores: the `response` it is given is `multi_turn.reward_text(sample, decode)`, the same in
rollout and eval for every kind: a multi-turn sample's final answer (`metadata["final_answer"]`, the text
between the answer tags) when it gave one, else the whole decoded response (a single-turn sample's, or a
multi-turn one's that ended without an answer: tool calls and results included). The turns stay readable
in `sample.metadata["turns"]`.

Failure policy (DESIGN.md §5): a reward that raises marks the samples it was scoring `failed`, with
reward 0.0 and a zero loss mask; the run continues and the failures are counted by the caller. A
per-sample reward (a rule, or a custom function without `batched_reward`) fails only the sample whose
call raised or returned something that is not a number; a batched or remote reward fails its batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import httpx

from slime_rl.config.rollout import ReliabilityConfig, RewardConfig
from slime_rl.engines.client import shared_ssl_context
from slime_rl.errors import ConfigError
from slime_rl.plugins import load_plugin
from slime_rl.rollout.rewards.math import extract_final_answer, math_reward
from slime_rl.rollout.rewards.reliability import reliability_reward
from slime_rl.types import Sample

logger = logging.getLogger(__name__)


RewardFunction = TypeVar("RewardFunction", bound=Callable[..., Any])  # a custom reward, as the user wrote it

# One entry per sample: its reward, or the exception that scoring that sample raised.
RewardResult = float | Exception


class RewardFn(Protocol):
    """Scores a batch of samples given their decoded responses; one result per sample, same order.

    Raising fails the whole batch; an exception in a sample's place fails that sample alone.
    """

    async def __call__(self, samples: Sequence[Sample], responses: Sequence[str]) -> list[RewardResult]: ...


def _as_reward(value: Any) -> RewardResult:
    """`value` as a float reward, or a TypeError naming what came back instead."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return TypeError(f"reward function returned {value!r}, not a number")


def batched_reward(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a custom reward as batched: it takes `(samples, responses)` lists and returns a list."""
    fn.slime_rl_batched = True  # type: ignore[attr-defined]
    return fn


def _rule(check: Callable[[str, str | None], float]) -> RewardFn:
    async def score(samples: Sequence[Sample], responses: Sequence[str]) -> list[RewardResult]:
        results: list[RewardResult] = []
        for sample, response in zip(samples, responses, strict=True):
            try:
                results.append(_as_reward(check(response, sample.label)))
            except Exception as err:  # one malformed response must not fail its neighbours
                results.append(err)
        return results

    return score


RULES: dict[str, Callable[[str, str | None], float]] = {
    "math": math_reward,
}

# How each rule finds the final answer in a response; the reliability reward compares it with the abstain
# answer. A custom reward names its own with `answer_extractor`; a remote one uses `extract_final_answer`.
ANSWER_EXTRACTORS: dict[str, Callable[[str], str]] = {
    "math": extract_final_answer,
}


def answer_extractor(extract: Callable[[str], str]) -> Callable[[RewardFunction], RewardFunction]:
    """Mark a custom reward with the function that pulls the final answer out of a response.

    `kind=reliability` with `inner=custom` compares `extract(response)` with the abstain answer; a custom
    reward without the mark gets `extract_final_answer` (the `math` rule's). Sets `fn.slime_rl_answer_extractor`.
    """

    def mark(fn: RewardFunction) -> RewardFunction:
        fn.slime_rl_answer_extractor = extract  # type: ignore[attr-defined]
        return fn

    return mark


def _load_function(path: str) -> Callable[..., Any]:
    return load_plugin("rollout.reward.path", path)


def _custom(fn: Callable[..., Any]) -> RewardFn:
    is_batched = getattr(fn, "slime_rl_batched", False)

    async def call(*args: Any) -> Any:
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result

    async def score(samples: Sequence[Sample], responses: Sequence[str]) -> list[RewardResult]:
        if not is_batched:  # per sample: a raising call fails its own sample only
            results = await asyncio.gather(
                *(call(s, r) for s, r in zip(samples, responses, strict=True)), return_exceptions=True
            )
            return [result if isinstance(result, Exception) else _as_reward(result) for result in results]
        rewards = await call(list(samples), list(responses))
        if len(rewards) != len(samples):
            raise ValueError(f"reward function returned {len(rewards)} rewards for {len(samples)} samples")
        return [_as_reward(r) for r in rewards]

    return score


def _remote(url: str, timeout_s: float) -> RewardFn:
    async def score(samples: Sequence[Sample], responses: Sequence[str]) -> list[RewardResult]:
        body = {
            "samples": [
                {
                    "uid": s.uid,
                    "prompt_ids": s.prompt_ids.tolist(),
                    "response": r,
                    "label": s.label,
                    "metadata": s.metadata,
                }
                for s, r in zip(samples, responses, strict=True)
            ]
        }
        async with httpx.AsyncClient(timeout=timeout_s, verify=shared_ssl_context()) as http:
            response = await http.post(url, json=body)
            response.raise_for_status()
            rewards = response.json()["rewards"]
        if len(rewards) != len(samples):
            raise ValueError(f"remote reward {url} returned {len(rewards)} rewards for {len(samples)} samples")
        return [_as_reward(r) for r in rewards]

    return score


def make_reward_fn(cfg: RewardConfig) -> RewardFn:
    """Resolve the configured reward once; errors name the key and the valid choices."""
    if cfg.kind == "custom":
        if not cfg.path:
            raise ConfigError("rollout.reward.kind=custom needs rollout.reward.path='module:function'")
        return _custom(_load_function(cfg.path))
    if cfg.kind == "remote":
        if not cfg.url:
            raise ConfigError("rollout.reward.kind=remote needs rollout.reward.url='http://host:port/path'")
        return _remote(cfg.url, cfg.timeout_s)
    if cfg.kind == "reliability":
        inner = cfg.reliability.inner
        assert inner is not None, "RewardConfig.__post_init__ requires reliability.inner"
        if inner not in RULES and inner not in ("custom", "remote"):
            raise ConfigError(
                f"rollout.reward.reliability.inner={inner!r} is unknown; "
                f"choose one of {sorted([*RULES, 'custom', 'remote'])}"
            )
        inner_fn = make_reward_fn(dataclasses.replace(cfg, kind=inner, reliability=ReliabilityConfig()))
        extract = ANSWER_EXTRACTORS.get(inner, extract_final_answer)
        if inner == "custom":
            assert cfg.path is not None, "RewardConfig.__post_init__ requires path for inner=custom"
            extract = getattr(_load_function(cfg.path), "slime_rl_answer_extractor", extract_final_answer)
        return reliability_reward(inner_fn, extract=extract, cfg=cfg.reliability)
    if cfg.kind in RULES:
        return _rule(RULES[cfg.kind])
    raise ConfigError(
        f"rollout.reward.kind={cfg.kind!r} is unknown; "
        f"choose one of {sorted([*RULES, 'custom', 'remote', 'reliability'])}"
    )


async def score_samples(reward_fn: RewardFn, samples: Sequence[Sample], responses: Sequence[str]) -> int:
    """Set `reward` on every sample; mark the samples whose scoring failed `failed` (reward 0, nothing trained).

    Returns the number of samples marked failed.
    """
    try:
        results = await reward_fn(samples, responses)
    except Exception as err:  # a user's reward function may raise anything; the run must go on
        results = [err] * len(samples)
    num_failed = 0
    for sample, result in zip(samples, results, strict=True):
        if isinstance(result, Exception):
            sample.fail(f"reward: {result!r}")
            num_failed += 1
        else:
            sample.reward = result
    if num_failed:
        first_error = next(r for r in results if isinstance(r, Exception))
        logger.warning("reward failed on %d of %d samples (first: %r)", num_failed, len(samples), first_error)
    return num_failed
