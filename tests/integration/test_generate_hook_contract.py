"""Every generate hook against a real native engine (a seeded random toy model): the hook contract holds.

Invariants (`contract_errors`): per-token arrays line up and stay within the budget; loss mask 1 exactly
on the tokens in weight spans (the policy's), log-probs finite and <= 0 there and exactly 0.0 under
mask 0. The random model rarely writes a tool call itself, so multi-turn samples start from a turn that
already holds a call (as a sample resumed between its call and the tool): the tool's result goes in under
mask 0 and generation continues after it. An abort mid-turn resumes that turn from its tokens.
"""

from __future__ import annotations

import asyncio
import copy
import random

import numpy as np
import pytest

from slime_rl.config.rollout import GenerateConfig
from slime_rl.config.tools import ToolsConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import SamplingParams
from slime_rl.rollout.generate import generate_group
from slime_rl.rollout.hook import Generation, TokenizerCodec, contract_errors, make_generation
from slime_rl.rollout.tools.registry import ToolRegistry
from slime_rl.toy.tokenizer import make_char_tokenizer
from slime_rl.types import Group, Sample, Status
from tests.integration.conftest import toy_engine

CODEC = TokenizerCodec(make_char_tokenizer())
CALL = "<tool>calculator: 6*7</tool>"
RESULT = "<result>42</result>"
MAX_NEW_TOKENS = 96
HOOKS = {
    "single_turn": GenerateConfig(),
    "multi_turn": GenerateConfig(kind="multi_turn", max_turns=3),
    "custom": GenerateConfig(kind="custom", path="examples.custom_generate:answer_then_review"),
}


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory):
    with toy_engine(tmp_path_factory, max_running_requests=16, max_context_len=256) as url:
        yield url


def _generation(kind: str) -> Generation:
    tools_cfg = ToolsConfig()
    return make_generation(HOOKS[kind], codec=CODEC, tools=ToolRegistry(tools_cfg), tools_cfg=tools_cfg)


def _group(num_samples: int, *, with_call: bool, seed: int = 0) -> Group:
    rng = random.Random(seed)
    samples = []
    for i in range(num_samples):
        prompt = CODEC.encode("Q: " + "".join(rng.choice("0123456789+*") for _ in range(8)) + "\n")
        sample = Sample(uid=f"g{seed}-{i}", group_id=f"g{seed}", index=i, prompt_ids=prompt)
        if with_call:  # a turn the policy already wrote under weights 0 (made-up log-probs)
            sample.append_tokens(np.array(CODEC.encode(CALL)), np.full(len(CALL), -1.0), version=0)
            sample.status = Status.ABORTED
        samples.append(sample)
    return Group(group_id=f"g{seed}", samples=samples)


async def _round(
    client: EngineClient, group: Group, generation: Generation, version: int, stop: asyncio.Event | None = None
) -> None:
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0)
    await generate_group(
        client, group, params, MAX_NEW_TOKENS, version, asyncio.Semaphore(8), stop=stop, seed=7, generation=generation
    )


@pytest.mark.parametrize("kind", sorted(HOOKS))
def test_generate_hook_keeps_the_contract_on_a_native_engine(engine_url, kind):
    group = _group(6, with_call=kind == "multi_turn")

    async def go() -> None:
        async with EngineClient(engine_url) as client:
            await client.update_weight_version("0")
            await _round(client, group, _generation(kind), version=0)

    asyncio.run(go())

    for sample in group.samples:
        assert sample.status in (Status.COMPLETED, Status.TRUNCATED), sample.metadata
        assert contract_errors(sample, MAX_NEW_TOKENS) == []
        assert 0 < len(sample.response_ids) <= MAX_NEW_TOKENS
        assert sample.loss_mask[0] == 1  # every response starts with the policy's tokens
    if kind == "single_turn":
        assert all(s.loss_mask.all() for s in group.samples)
    else:  # an environment message (the tool result, the review) under mask 0 in every sample
        assert all((s.loss_mask == 0).any() for s in group.samples)
    if kind == "multi_turn":
        for sample in group.samples:
            first = sample.metadata["turns"][0]
            assert first["policy"] == [0, len(CALL)] and first["tool"] == "calculator" and first["error"] is None
            end = len(CALL) + len(RESULT)
            assert CODEC.decode(sample.response_ids[:end]) == CALL + RESULT
            assert sample.loss_mask[len(CALL) : end].tolist() == [0] * len(RESULT)


def test_multi_turn_aborted_mid_turn_on_a_native_engine_resumes_that_turn_under_the_new_version(engine_url):
    group = _group(8, with_call=True, seed=1)
    generation = _generation("multi_turn")
    after_result = len(CALL) + len(RESULT)

    async def first_round(client: EngineClient) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(_round(client, group, generation, version=0, stop=stop))
        while (await client.get_loads()).num_reqs == 0 and not task.done():  # requests of turn 2 are running
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)
        stop.set()
        while not task.done():
            await client.abort_all()
            await asyncio.sleep(0.01)
        await task

    async def go() -> dict[str, Sample]:
        async with EngineClient(engine_url) as client:
            await client.update_weight_version("0")
            await first_round(client)
            before = {s.uid: copy.deepcopy(s) for s in group.samples}
            await client.update_weight_version("1")
            await _round(client, group, generation, version=1)
            return before

    before = asyncio.run(go())

    mid_turn = [s for s in before.values() if s.status is Status.ABORTED and len(s.response_ids) > after_result]
    assert mid_turn, "the abort should catch some samples in the middle of their second turn"
    for sample in group.samples:
        old = before[sample.uid]
        k = len(old.response_ids)
        assert sample.response_ids[:k].tolist() == old.response_ids.tolist()  # resumed, not regenerated
        assert sample.rollout_logprobs[:k].tolist() == old.rollout_logprobs.tolist()
        assert contract_errors(sample, MAX_NEW_TOKENS) == [] and sample.status.is_finished
    for old in mid_turn:
        new = next(s for s in group.samples if s.uid == old.uid)
        k = len(old.response_ids)
        assert len(old.metadata["turns"]) == 1  # the abort left turn 2 open: it resumed at that turn
        assert old.weight_spans == [(0, 0, len(CALL)), (0, after_result, k)]
        if len(new.response_ids) > k:  # turn 2 went on under weights 1, in a span of its own
            assert new.weight_spans[:3] == [(0, 0, len(CALL)), (0, after_result, k), (1, k, new.weight_spans[2][2])]
