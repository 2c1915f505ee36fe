"""Fakes for RolloutManager unit tests: a protocol-shaped engine and an in-memory buffer with the counters.

`FakeEngine` emits one token per `tick_s`: token `100 + position`, so a continuation is checkable by value;
a sample stops (EOS, finish `stop`) at its planned response length; `abort_all` ends every live request with
its partial output and finish `abort`, as SGLang does. `MemoryBuffer` keeps the `RedisBuffer` moves and
counters and round-trips groups through the real codec, so recycled groups are copies, as in Redis.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from slime_rl.buffer.codec import decode_group, encode_group
from slime_rl.config.rollout import RolloutConfig
from slime_rl.engines.client import EngineError
from slime_rl.engines.protocol import EngineLoad, FinishReason, GenerateOutput, GenerateRequest
from slime_rl.rollout.filters import keep_all
from slime_rl.rollout.manager import RolloutManager
from slime_rl.types import Group, Sample

PROMPT = [1, 2, 3]


class FakeEngine:
    def __init__(self, lengths: dict[str, int], *, tick_s: float = 0.001, version: str = "0", fail: bool = False):
        self.lengths = lengths  # uid -> planned total response length
        self.tick_s = tick_s
        self.weight_version = version
        self.fail = fail
        self.requests: list[GenerateRequest] = []
        self.live: set[str] = set()
        self._aborted: set[str] = set()

    async def generate(self, request: GenerateRequest) -> GenerateOutput:
        if self.fail:
            raise EngineError("fake engine is down")
        self.requests.append(request)
        rid = request.rid or ""
        self.live.add(rid)
        position = len(request.input_ids) - len(PROMPT)
        out: list[int] = []
        finish = FinishReason(type="length", length=request.sampling_params.max_new_tokens)
        try:
            while len(out) < request.sampling_params.max_new_tokens:
                if rid in self._aborted:
                    finish = FinishReason(type="abort", message="aborted")
                    break
                if position + len(out) >= self.lengths.get(rid, 10**9):
                    finish = FinishReason(type="stop", matched=0)
                    break
                await asyncio.sleep(self.tick_s)
                out.append(100 + position + len(out))
        finally:
            self.live.discard(rid)
            self._aborted.discard(rid)
        return GenerateOutput(
            rid=rid,
            text="",
            output_ids=out,
            output_logprobs=[-1.0] * len(out),
            finish_reason=finish,
            prompt_tokens=len(request.input_ids),
            weight_version=self.weight_version,
        )

    async def abort_all(self) -> None:
        self._aborted |= self.live

    async def get_loads(self) -> EngineLoad:
        return EngineLoad(num_running_reqs=len(self.live), num_waiting_reqs=0)


class MemoryBuffer:
    """In-memory stand-in for `RedisBuffer`'s rollout side, with the same counters and invariant."""

    def __init__(self) -> None:
        self.prompts: list[bytes] = []
        self.partials: list[bytes] = []
        self.samples: list[tuple[int, Group]] = []
        self.counters: Counter[str] = Counter()

    def add_prompts(self, group_ids: list[str], group_size: int) -> None:
        for gid in group_ids:
            samples = [Sample(uid=f"{gid}-{i}", group_id=gid, index=i, prompt_ids=PROMPT) for i in range(group_size)]
            self.prompts.append(encode_group(Group(group_id=gid, samples=samples)))

    def take_groups(self, n: int) -> list[Group]:
        taken = self.partials[:n]
        self.partials = self.partials[n:]
        fresh = self.prompts[: n - len(taken)]
        self.prompts = self.prompts[len(fresh) :]
        self.counters["issued"] += len(fresh)
        self.counters["in_flight"] += len(taken) + len(fresh)
        return [decode_group(g) for g in taken + fresh]

    def put_partials(self, groups: list[Group]) -> None:
        self.partials += [encode_group(g) for g in groups]
        self.counters["recycled"] += len(groups)
        self.counters["in_flight"] -= len(groups)

    def publish(self, groups: list[Group], version: int) -> None:
        assert all(g.is_finished for g in groups)
        self.samples += [(version, decode_group(encode_group(g))) for g in groups]
        self.counters["completed"] += len(groups)
        self.counters["in_flight"] -= len(groups)

    def record_drops(self, reason: str, groups: list[Group]) -> None:
        self.counters[f"dropped_{reason}"] += len(groups)
        self.counters["in_flight"] -= len(groups)

    def unaccounted(self) -> int:
        dropped = sum(v for k, v in self.counters.items() if k.startswith("dropped_"))
        held = self.counters["in_flight"] + len(self.partials) + len(self.samples)
        return self.counters["issued"] - (dropped + held)


async def first_sample_wins(samples, responses) -> list[float]:
    """Reward 1 for each group's sample 0, else 0: every group has a non-zero reward std."""
    return [1.0 if s.index == 0 else 0.0 for s in samples]


async def all_zero(samples, responses) -> list[float]:
    return [0.0 for _ in samples]


def make_manager(buffer, engine, *, group_filter=keep_all, reward_fn=first_sample_wins, **overrides) -> RolloutManager:
    """A manager over `engine` and `buffer`: 2 groups of 2 per step unless `overrides` say otherwise."""
    settings = {"rollout_batch_size": 2, "n_samples_per_prompt": 2, "max_new_tokens": 1000} | overrides
    return RolloutManager(
        RolloutConfig(**settings),
        router=engine,
        engines=[engine],
        buffer=buffer,
        refill_prompts=lambda n: None,
        reward_fn=reward_fn,
        decode=lambda ids: "",
        group_filter=group_filter,
    )
