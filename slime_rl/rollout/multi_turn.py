"""Built-in multi-turn tool use (`rollout.generate.kind=multi_turn`): a generate hook and its metrics.

A turn is the policy's tokens up to a closing tag (`stop_strings`: a tool call's or an answer's). The turn
is parsed (`parse_turn`); a tool call runs through the registry and `format_result(...)` is tokenized and
appended with loss mask 0 and log-prob 0.0 (`Sample.append_observation`); the next turn continues from
all of it. It ends at a final answer, EOS, a turn without a call, the token budget (`max_new_tokens`
counts tool tokens too), `rollout.generate.max_turns` policy turns, or `tools.max_tool_calls` calls.

Stop strings: the engine protocol carries stop token ids only, so each request stops at the last token
of every closing tag (a cheap over-approximation), and the turn's text decides: tokens after the first
closing tag are dropped (their log-probs with them, so the kept prefix is exactly what the policy
sampled), and a stop token that closed no tag just continues the turn with another request.

Resumable state lives in the sample (APRIL, weight updates): its tokens and `metadata["turns"]`, one
record per finished turn: `{"policy": [start, end], "action": "tool" | "answer" | "text", "tool": name,
"error": kind, "result": [start, end]}` (`tool`, `error`, `result` are None where they do not apply). The
current turn starts where the last record's result ends; its tokens are all the policy's. If they
already end at a closing tag (the abort came between a turn and its tool call), the tool runs without
generating. `metadata["stop_reason"]` says why the sample ended, `metadata["final_answer"]` holds the
answer text. Each turn's tokens carry the weight version the engine reported for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from slime_rl.config.tools import ToolsConfig
from slime_rl.rollout.generate import generate_sample
from slime_rl.rollout.hook import GenerateContext, TextCodec
from slime_rl.rollout.tools.tool_call import FinalAnswer, ToolCall, format_result, parse_turn, stop_strings
from slime_rl.types import Sample, Status


def turn_start(sample: Sample) -> int:
    """Index of the first response token of the sample's current (unfinished) turn."""
    turns = sample.metadata.get("turns") or []
    if not turns:
        return 0
    last = turns[-1]
    return last["result"][1] if last["result"] is not None else last["policy"][1]


def stop_token_ids(codec: TextCodec, stops: Sequence[str]) -> list[int]:
    """The last token of each stop string: the engine stops there and the text decides if a tag closed."""
    return sorted({ids[-1] for ids in map(codec.encode, stops) if ids})


def first_stop_end(codec: TextCodec, turn: np.ndarray, start: int, stops: Sequence[str]) -> int | None:
    """The fewest tokens of `turn` (at least `start`) whose text contains a stop string; None if none does.

    `turn[:start]` is known to contain none. Decoding a longer prefix only adds text, so a binary search finds it.
    """
    if not any(s in codec.decode(turn) for s in stops):
        return None
    low, high = start, len(turn)  # invariant: turn[:low] has no stop string, turn[:high] has one
    while high - low > 1:
        mid = (low + high) // 2
        if any(s in codec.decode(turn[:mid]) for s in stops):
            high = mid
        else:
            low = mid
    return high


def truncate_response(sample: Sample, n: int) -> None:
    """Keep the first `n` response tokens (dropping the rest with their log-probs, masks and span ends)."""
    sample.response_ids = sample.response_ids[:n]
    sample.rollout_logprobs = sample.rollout_logprobs[:n]
    sample.loss_mask = sample.loss_mask[:n]
    sample.weight_spans = [(v, s, min(e, n)) for v, s, e in sample.weight_spans if s < n]


async def _generate_turn(ctx: GenerateContext, sample: Sample, codec: TextCodec, stops: Sequence[str]) -> bool:
    """Extend the current turn by requests until it ends at a closing tag (True) or the sample stops (False).

    On False the sample's status says why: `aborted` (resumable), `completed` (EOS), `truncated`, `failed`.
    """
    start = turn_start(sample)
    soft_stops = set(stop_token_ids(codec, stops))
    sampling = dataclasses.replace(
        ctx.sampling, stop_token_ids=sorted(soft_stops | set(ctx.sampling.stop_token_ids or ()))
    )
    while True:
        if ctx.is_stopped:
            sample.status = Status.ABORTED
            return False
        before = len(sample.response_ids)
        sample.status = Status.PENDING  # until a request answers: an engine error must leave it unfinished
        await generate_sample(ctx.client, sample, sampling, ctx.max_new_tokens, ctx.version, seed=ctx.seed)
        if sample.status is Status.FAILED:
            return False
        end = first_stop_end(codec, sample.response_ids[start:], before - start, stops)
        if end is not None:
            truncate_response(sample, start + end)
            sample.status = Status.PENDING  # whatever the engine said, the turn's tool call is still to run
            return True
        soft_stopped = (
            sample.status is Status.COMPLETED
            and len(sample.response_ids) > before
            and int(sample.response_ids[-1]) in soft_stops
        )
        if not soft_stopped:
            return False


def _record(sample: Sample, record: dict[str, Any]) -> None:
    sample.metadata["turns"] = [*(sample.metadata.get("turns") or []), record]


def _finish(sample: Sample, status: Status, reason: str) -> None:
    sample.status = status
    sample.metadata["stop_reason"] = reason


def _turn_record(start: int, end: int, action: ToolCall | FinalAnswer | None) -> dict[str, Any]:
    kind = "tool" if isinstance(action, ToolCall) else "answer" if isinstance(action, FinalAnswer) else "text"
    tool = action.name if isinstance(action, ToolCall) else None
    return {"policy": [start, end], "action": kind, "tool": tool, "error": None, "result": None}


async def multi_turn(ctx: GenerateContext, sample: Sample) -> None:
    """The built-in multi-turn hook: turns of policy tokens and tool results until an answer or a limit."""
    if ctx.codec is None or ctx.tools is None or ctx.tools_cfg is None:
        raise ValueError("multi_turn needs ctx.codec, ctx.tools and ctx.tools_cfg (the rollout worker sets them)")
    codec, fmt = ctx.codec, ctx.tools_cfg
    stops = stop_strings(fmt)
    while True:
        start = turn_start(sample)
        is_pending_call = first_stop_end(codec, sample.response_ids[start:], 0, stops) is not None
        if not is_pending_call and not await _generate_turn(ctx, sample, codec, stops):
            if sample.status.is_finished and sample.status is not Status.FAILED:  # EOS or the budget
                end = len(sample.response_ids)
                action = parse_turn(codec.decode(sample.response_ids[start:]), fmt)
                _record(sample, _turn_record(start, end, action))
                if isinstance(action, FinalAnswer):
                    sample.metadata["final_answer"] = action.text
                sample.metadata["stop_reason"] = "eos" if sample.status is Status.COMPLETED else "length"
            return
        end = len(sample.response_ids)
        action = parse_turn(codec.decode(sample.response_ids[start:end]), fmt)
        if not isinstance(action, ToolCall):
            _record(sample, _turn_record(start, end, action))
            if isinstance(action, FinalAnswer):
                sample.metadata["final_answer"] = action.text
            _finish(sample, Status.COMPLETED, "answer" if isinstance(action, FinalAnswer) else "text")
            return
        limit = _tool_limit(sample, ctx.max_turns, fmt)
        if limit is not None:
            _record(sample, _turn_record(start, end, action))
            _finish(sample, Status.TRUNCATED, limit)
            return
        if ctx.is_stopped:  # the call runs on resume (its closing tag is in the turn's tokens)
            sample.status = Status.ABORTED
            return
        result = await ctx.tools.call(action.name, action.arguments)
        ids = codec.encode(format_result(result, fmt))
        room = ctx.max_new_tokens - len(sample.response_ids)
        record = _turn_record(start, end, action)
        record["error"] = result.error_kind
        record["result"] = [end, end + min(len(ids), room)]
        # Appended and recorded with no await in between: a cancelled task never leaves one without the other.
        sample.append_observation(np.asarray(ids[:room], np.int32))
        _record(sample, record)
        if len(ids) >= room:
            _finish(sample, Status.TRUNCATED, "length")
            return


def _tool_limit(sample: Sample, max_turns: int, fmt: ToolsConfig) -> str | None:
    """The limit a further tool call would break ("max_turns", "max_tool_calls"), or None."""
    turns = sample.metadata.get("turns") or []
    if len(turns) + 1 >= max_turns:  # the call's result would be read by a turn past the limit
        return "max_turns"
    if sum(t["action"] == "tool" and t["result"] is not None for t in turns) >= fmt.max_tool_calls:
        return "max_tool_calls"
    return None


def turn_metrics(samples: Sequence[Sample], *, prefix: str = "rollout") -> dict[str, float]:
    """`{prefix}/*` tool-use metrics of finished samples (zeros for single-turn samples, which have no turns).

    `tool_use_rate`: samples that ran at least one tool; `tool_calls_mean`: tools run per sample;
    `tool_error_rate`: calls that came back as errors, among all calls; `turns_mean`: policy turns per sample.
    """
    turns = [s.metadata.get("turns") or [] for s in samples]
    calls = [[t for t in ts if t["result"] is not None] for ts in turns]
    num_calls = sum(map(len, calls))
    num_errors = sum(t["error"] is not None for cs in calls for t in cs)
    n = max(len(samples), 1)
    return {
        f"{prefix}/tool_use_rate": sum(bool(cs) for cs in calls) / n,
        f"{prefix}/tool_calls_mean": num_calls / n,
        f"{prefix}/tool_error_rate": num_errors / max(num_calls, 1),
        f"{prefix}/turns_mean": sum(map(len, turns)) / n,
    }


def reward_text(sample: Sample, decode: Callable[[np.ndarray], str]) -> str:
    """The text a reward scores: the policy's final answer when it gave one; else, for a multi-turn sample, the
    policy's own tokens (those in its weight spans); else the whole decoded response.

    A multi-turn response holds tool calls and tool results (`<result>42</result>`); scoring the tool's output
    would reward the policy for text it did not write. An empty answer (`<answer></answer>`) is scored as empty.
    """
    answer = sample.metadata.get("final_answer")
    if answer is not None:
        return answer
    if "turns" in sample.metadata:
        return decode(np.concatenate([sample.response_ids[start:end] for _, start, end in sample.weight_spans] or [[]]))
    return decode(sample.response_ids)
