"""Over-long requests end to end: the native engine behind the real sglang-router refuses them with HTTP 400,
and the sample whose request it refused comes back failed, so its group finishes instead of being recycled."""

from __future__ import annotations

import asyncio

import pytest

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import SamplingParams
from slime_rl.engines.router import Router
from slime_rl.engines.server import EngineProcess
from slime_rl.rollout.generate import generate_group
from slime_rl.toy.model import make_toy_model
from slime_rl.types import Group, Sample, Status


@pytest.fixture(scope="module")
def router_url(tmp_path_factory):
    model = make_toy_model(tmp_path_factory.mktemp("toy") / "model", seed=0)
    engine = EngineProcess(EngineConfig(max_running_requests=4, max_context_len=64, startup_timeout_s=120), str(model))
    router = Router(policy="round_robin")
    try:
        router.start([engine.start()])
        yield router.url
    finally:
        router.stop()
        engine.stop()


def test_generate_group_through_the_router_fails_only_the_sample_over_the_context(router_url):
    # Context 64: a 60-token prompt with 8 new tokens needs 68 and is refused; a 3-token one runs.
    group = Group(
        group_id="g",
        samples=[
            Sample(uid="long", group_id="g", index=0, prompt_ids=[7] * 60),
            Sample(uid="short", group_id="g", index=1, prompt_ids=[1, 5, 6]),
        ],
    )

    async def go() -> None:
        async with EngineClient(router_url, backoff_s=0.0) as client:
            params = SamplingParams(max_new_tokens=8, ignore_eos=True)
            await generate_group(client, group, params, 8, version=0, semaphore=asyncio.Semaphore(2))

    asyncio.run(go())

    long, short = group.samples
    assert long.status is Status.FAILED
    assert long.metadata["error"] == (
        "engine: 400 Requested token count exceeds the model's maximum context length of 64 tokens. You requested "
        "a total of 68 tokens: 60 tokens from the input messages and 8 tokens for the completion. Please reduce "
        "the number of tokens in the input messages or the completion to fit within the limit."
    )
    assert short.status is Status.TRUNCATED and len(short.response_ids) == 8
    assert group.is_finished
