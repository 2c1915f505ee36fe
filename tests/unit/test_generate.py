"""generate_group / generate_sample through the real EngineClient against a scripted engine (tests/fake_http.py).

An engine's 4xx means the request itself is bad: the sample fails and its group finishes. A 5xx or a
dropped connection is the engine's fault: the sample keeps its tokens and status so the group is recycled.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import SamplingParams
from slime_rl.rollout.generate import generate_group, generate_sample
from slime_rl.types import Group, Sample, Status
from tests.fake_http import serve

TOO_LONG = "The input (3 tokens) is longer than the model's context length (3 tokens)."


def ok_body(rid: str, ids: list[int]) -> dict:
    meta = {
        "id": rid,
        "finish_reason": {"type": "stop", "matched": ids[-1]},
        "prompt_tokens": 3,
        "completion_tokens": len(ids),
        "weight_version": "4",
        "output_token_logprobs": [[-0.5, t, None] for t in ids],
    }
    return {"text": "", "output_ids": ids, "meta_info": meta}


def make_group(*uids: str) -> Group:
    samples = [Sample(uid=uid, group_id="g", index=i, prompt_ids=[1, 2, 3]) for i, uid in enumerate(uids)]
    return Group(group_id="g", samples=samples)


def run_group(group: Group, handler, *, max_retries: int = 0) -> Group:
    async def go() -> Group:
        async with serve(handler) as url, EngineClient(url, max_retries=max_retries, backoff_s=0.0) as c:
            params = SamplingParams(max_new_tokens=8)
            return await generate_group(c, group, params, 8, version=4, semaphore=asyncio.Semaphore(4))

    return asyncio.run(go())


def test_generate_group_engine_400_fails_that_sample_and_finishes_the_group():
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        rid = json.loads(request.content)["rid"]
        calls.append(rid)
        if rid == "bad":
            return httpx.Response(400, json={"error": {"message": TOO_LONG}})
        return httpx.Response(200, json=ok_body(rid, [7, 8]))

    group = run_group(make_group("bad", "good"), handler, max_retries=3)

    bad, good = group.samples
    assert group.is_finished
    assert bad.status is Status.FAILED and bad.metadata["error"] == f"engine: 400 {TOO_LONG}"
    assert bad.reward == 0.0 and len(bad.response_ids) == 0
    assert good.status is Status.COMPLETED and good.response_ids.tolist() == [7, 8]
    assert sorted(calls) == ["bad", "good"]  # a 400 is never resent


def test_generate_group_engine_400_on_a_resumed_sample_keeps_its_tokens_untrained():
    group = make_group("resumed")
    sample = group.samples[0]
    sample.append_tokens(np.array([5, 6]), np.array([-1.0, -1.0]), version=3)
    sample.status = Status.ABORTED

    run_group(group, lambda request: httpx.Response(400, json={"error": {"message": TOO_LONG}}))

    assert sample.status is Status.FAILED
    assert sample.response_ids.tolist() == [5, 6] and sample.loss_mask.tolist() == [0, 0]


@pytest.mark.parametrize("status", [503, 500, 429])
def test_generate_group_engine_fault_keeps_the_sample_for_recycling(status):
    group = make_group("a")

    run_group(group, lambda request: httpx.Response(status, json={"error": {"message": "busy"}}), max_retries=1)

    assert group.samples[0].status is Status.PENDING and "error" not in group.samples[0].metadata
    assert not group.is_finished


def test_generate_group_connection_refused_keeps_the_sample_for_recycling():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    group = run_group(make_group("a"), handler, max_retries=1)

    assert group.samples[0].status is Status.PENDING and not group.is_finished


def test_generate_sample_resumed_request_sends_prompt_plus_response_with_the_rest_of_the_budget():
    seen: dict = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(json.loads(request.content))
        return httpx.Response(200, json=ok_body("a", [9]))

    sample = make_group("a").samples[0]
    sample.append_tokens(np.array([5, 6]), np.array([-1.0, -1.0]), version=3)

    async def go() -> None:
        async with serve(handler) as url, EngineClient(url) as client:
            await generate_sample(client, sample, SamplingParams(max_new_tokens=8), 8, version=4)

    asyncio.run(go())

    # 3 prompt + 2 generated tokens in, 8 - 2 = 6 to go: 5 + 6 = 11 = 3 + 8, the total a fresh request asks for.
    assert seen["input_ids"] == [1, 2, 3, 5, 6] and seen["sampling_params"]["max_new_tokens"] == 6
    assert sample.response_ids.tolist() == [5, 6, 9] and sample.status is Status.COMPLETED


def test_generate_group_resends_a_request_whose_engine_went_out_of_service_once_one_serves():
    """The engine died under the request (502) and the monitor took it out: no engine serves for a while.
    The request waits, then goes again once an engine serves; the sample finishes, nothing is recycled."""
    from slime_rl.rollout.serving import ServingEngines

    calls: list[str] = []

    async def go() -> Group:
        serving = ServingEngines([EngineClient("http://engine-0")])

        async def handler(request: httpx.Request) -> httpx.Response:
            rid = json.loads(request.content)["rid"]
            calls.append(rid)
            if len(calls) == 1:  # the engine dies under the request; the monitor takes it out, restarts it later
                await serving.update([])
                asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(restore()))
                return httpx.Response(502, text="upstream gone")
            return httpx.Response(200, json=ok_body(rid, [7, 8]))

        async def restore() -> None:
            await serving.update([EngineClient("http://engine-0")])

        async with serve(handler) as url, EngineClient(url, max_retries=0) as c:
            group = make_group("a")
            params = SamplingParams(max_new_tokens=8)
            return await generate_group(c, group, params, 8, version=4, semaphore=asyncio.Semaphore(4), serving=serving)

    group = asyncio.run(go())
    assert calls == ["a", "a"]
    assert group.is_finished and group.samples[0].status is Status.COMPLETED


def test_generate_group_keeps_the_group_for_recycling_when_the_same_engines_still_serve():
    from slime_rl.rollout.serving import ServingEngines

    async def go() -> Group:
        serving = ServingEngines([EngineClient("http://engine-0")])
        bad_gateway = serve(lambda request: httpx.Response(502, text="bad gateway"))
        async with bad_gateway as url, EngineClient(url, max_retries=0) as c:
            group = make_group("a")
            params = SamplingParams(max_new_tokens=8)
            return await generate_group(c, group, params, 8, version=4, semaphore=asyncio.Semaphore(4), serving=serving)

    group = asyncio.run(go())
    assert not group.is_finished and group.samples[0].status is Status.PENDING


def test_generate_group_stops_waiting_for_a_serving_engine_when_stop_is_set():
    """No engine serves (a lone engine is restarting) and a weight update pauses generation: the request
    must not hold the pause until the engine is back; the sample keeps its state for the next round."""
    from slime_rl.rollout.serving import ServingEngines

    async def go() -> Group:
        serving = ServingEngines([EngineClient("http://engine-0")])
        stop = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            await serving.update([])  # the engine died under the request and was taken out
            asyncio.get_running_loop().call_later(0.05, stop.set)  # then a pause comes
            return httpx.Response(502, text="upstream gone")

        async with serve(handler) as url, EngineClient(url, max_retries=0) as c:
            group = make_group("a")
            params = SamplingParams(max_new_tokens=8)
            return await asyncio.wait_for(
                generate_group(c, group, params, 8, 4, asyncio.Semaphore(4), stop=stop, serving=serving), timeout=10
            )

    group = asyncio.run(go())
    assert not group.is_finished and group.samples[0].status is Status.PENDING
