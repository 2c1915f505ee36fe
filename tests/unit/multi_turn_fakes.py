"""Fakes for generate-hook unit tests: an engine that answers each request with the next scripted reply.

Replies are text in the toy's char tokenizer (one token per character), so a test reads tokens as text.
`ScriptedEngine.abort_all` ends a reply that waits on `hold` with what it produced so far, finish `abort`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from slime_rl.config.tools import ToolsConfig
from slime_rl.engines.protocol import FinishReason, GenerateOutput, GenerateRequest, SamplingParams
from slime_rl.rollout.generate import generate_group
from slime_rl.rollout.hook import GenerateHook, Generation, TokenizerCodec
from slime_rl.rollout.multi_turn import multi_turn
from slime_rl.rollout.tools.registry import ToolRegistry
from slime_rl.toy.tokenizer import make_char_tokenizer
from slime_rl.types import Group, Sample

CODEC = TokenizerCodec(make_char_tokenizer())
EOS = 2
LOGPROB = -0.5


@dataclass
class Reply:
    text: str
    finish: str = "stop"  # stop (EOS appended unless `matched`) | length | abort
    hold: bool = False  # produce the text, then wait for abort_all (finish abort)


class ScriptedEngine:
    def __init__(self, replies: list[Reply], *, version: str = "0") -> None:
        self.replies = list(replies)
        self.weight_version = version
        self.requests: list[GenerateRequest] = []
        self.aborted = asyncio.Event()

    async def generate(self, request: GenerateRequest) -> GenerateOutput:
        self.requests.append(request)
        reply = self.replies.pop(0)
        ids = CODEC.encode(reply.text)
        finish = FinishReason(type=reply.finish, matched=ids[-1] if ids else None)
        is_stop_token = bool(ids) and ids[-1] in (request.sampling_params.stop_token_ids or ())
        if reply.finish == "stop" and not reply.hold and not is_stop_token:
            ids.append(EOS)
            finish = FinishReason(type="stop", matched=EOS)
        if len(ids) > request.sampling_params.max_new_tokens:
            ids = ids[: request.sampling_params.max_new_tokens]
            finish = FinishReason(type="length", length=len(ids))
        if reply.hold:
            await self.aborted.wait()
            finish = FinishReason(type="abort", message="aborted")
        return GenerateOutput(
            rid=request.rid or "",
            text="",
            output_ids=ids,
            output_logprobs=[LOGPROB] * len(ids),
            finish_reason=finish,
            prompt_tokens=len(request.input_ids or []),
            weight_version=self.weight_version,
        )

    async def abort_all(self) -> None:
        self.aborted.set()


def sample(uid: str = "s-0") -> Sample:
    return Sample(uid=uid, group_id="s", index=0, prompt_ids=CODEC.encode("What is 6*7?"))


def generation(hook: GenerateHook = multi_turn, *, max_turns: int = 4, **tools: object) -> Generation:
    cfg = ToolsConfig(**tools)  # type: ignore[arg-type]
    return Generation(hook=hook, codec=CODEC, tools=ToolRegistry(cfg), tools_cfg=cfg, max_turns=max_turns)


async def run_round(
    engine: ScriptedEngine,
    group_sample: Sample,
    gen: Generation,
    *,
    version: int = 0,
    max_new_tokens: int = 200,
    stop: asyncio.Event | None = None,
) -> Sample:
    """One round of requests (what the manager runs per step) on one sample."""
    group = Group(group_id=group_sample.group_id, samples=[group_sample])
    params = SamplingParams(max_new_tokens=max_new_tokens)
    await generate_group(
        engine, group, params, max_new_tokens, version, asyncio.Semaphore(4), stop=stop, generation=gen
    )  # type: ignore[arg-type]
    return group_sample


def text(ids) -> str:
    return CODEC.decode(ids)
