"""EngineClient against a scripted server on 127.0.0.1 (tests/fake_http.py): request shapes, parsing, retries and
errors."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from slime_rl.engines.client import EngineClient, EngineError
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from tests.fake_http import serve


def _generate_body(rid: str, ids: list[int], finish: dict) -> dict:
    return {
        "text": "ab",
        "output_ids": ids,
        "meta_info": {
            "id": rid,
            "finish_reason": finish,
            "prompt_tokens": 3,
            "completion_tokens": len(ids),
            "cached_tokens": 0,
            "weight_version": "7",
            "e2e_latency": 0.01,
            "output_token_logprobs": [[-0.5, t, None] for t in ids],
        },
    }


def _run(coro):
    return asyncio.run(coro)


def test_client_generate_sends_sglang_body_and_parses_output():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(json.loads(request.content))
        return httpx.Response(200, json=_generate_body("r1", [5, 6], {"type": "length", "length": 2}))

    async def go():
        async with serve(handler) as url, EngineClient(url) as client:
            params = SamplingParams(max_new_tokens=2, temperature=0.0, stop_token_ids=[9], sampling_seed=3)
            return await client.generate(GenerateRequest(input_ids=[1, 2, 3], sampling_params=params, rid="r1"))

    out = _run(go())
    assert seen["input_ids"] == [1, 2, 3] and seen["rid"] == "r1" and seen["return_logprob"] is True
    assert seen["sampling_params"]["stop_token_ids"] == [9] and seen["sampling_params"]["sampling_seed"] == 3
    assert out.output_ids == [5, 6] and out.output_logprobs == [-0.5, -0.5]
    assert out.finish_reason is not None and out.finish_reason.type == "length" and out.finish_reason.length == 2
    assert out.weight_version == "7" and out.prompt_tokens == 3


def test_client_retries_503_then_succeeds():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            return httpx.Response(503)
        return httpx.Response(200, json={"weight_version": "2"})

    async def go():
        async with serve(handler) as url:
            client = EngineClient(url, max_retries=3, backoff_s=0.0)
            try:
                return await client.get_weight_version()
            finally:
                await client.aclose()

    assert _run(go()) == "2"
    assert len(calls) == 3


def test_client_dropped_connection_raises_after_bounded_retries():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("dropped", request=request)

    async def go():
        # A POST: aiohttp itself resends an idempotent GET once on a dropped connection, below our retries.
        async with serve(handler) as url, EngineClient(url, max_retries=2, backoff_s=0.0) as c:
            await c.update_weight_version("3")

    with pytest.raises(EngineError, match="no answer after 3 tries"):
        _run(go())
    assert len(calls) == 3


def test_client_connection_refused_raises_after_bounded_retries():
    with socket.socket() as sock:  # a port nothing listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go():
        async with EngineClient(f"http://127.0.0.1:{port}", max_retries=2, backoff_s=0.0) as c:
            await c.get_loads()

    with pytest.raises(EngineError, match="no answer after 3 tries"):
        _run(go())


def test_client_400_error_message_is_surfaced_without_retry():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "rid r1 is already running"}})

    async def go():
        async with serve(handler) as url, EngineClient(url, backoff_s=0.0) as c:
            await c.generate(GenerateRequest(input_ids=[1], rid="r1"))

    with pytest.raises(EngineError, match="already running") as info:
        _run(go())
    assert info.value.status_code == 400 and len(calls) == 1


def test_client_weight_update_failure_raises_and_is_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return httpx.Response(400, json={"success": False, "message": "no group named g"})

    async def go():
        async with serve(handler) as url, EngineClient(url, backoff_s=0.0) as c:
            await c.update_weights_from_distributed(
                names=["w"], dtypes=["float32"], shapes=[[2, 2]], group_name="g", weight_version="3"
            )

    with pytest.raises(EngineError, match="no group named g"):
        _run(go())
    assert calls == [
        {
            "names": ["w"],
            "dtypes": ["float32"],
            "shapes": [[2, 2]],
            "group_name": "g",
            "flush_cache": True,
            "weight_version": "3",
        }
    ]


def test_client_stream_yields_cumulative_chunks_until_done():
    chunks = [
        _generate_body("s", [5], None),
        _generate_body("s", [5, 6], {"type": "stop", "matched": 2}),
    ]
    payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, content=payload.encode(), headers={"content-type": "text/event-stream"})

    async def go():
        async with serve(handler) as url, EngineClient(url) as c:
            return [out async for out in c.generate_stream(GenerateRequest(input_ids=[1], rid="s"))]

    outs = _run(go())
    assert [o.output_ids for o in outs] == [[5], [5, 6]]
    assert outs[0].finish_reason is None
    assert outs[1].finish_reason is not None and outs[1].finish_reason.matched == 2


def test_client_loads_sum_over_ranks():
    body = {"loads": [{"num_running_reqs": 2, "num_waiting_reqs": 1}, {"num_running_reqs": 1, "num_waiting_reqs": 0}]}

    async def go():
        async with serve(lambda request: httpx.Response(200, json=body)) as url, EngineClient(url) as c:
            return await c.get_loads()

    load = _run(go())
    assert (load.num_running_reqs, load.num_waiting_reqs, load.num_reqs) == (3, 1, 4)


def test_sampling_params_reject_bad_values():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=-1)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"text": "a", "output_ids": [1]}',
        json.dumps({**_generate_body("r1", [5], {"type": "length"}), "output_ids": ["x"]}).encode(),
        json.dumps({**_generate_body("r1", [5, 6], {"type": "length"}), "output_ids": [5]}).encode(),
    ],
)
def test_client_generate_turns_a_malformed_answer_into_an_engine_error_naming_the_endpoint(body):
    async def go():
        async with serve(lambda request: httpx.Response(200, content=body)) as url, EngineClient(url) as client:
            await client.generate(GenerateRequest(input_ids=[1], rid="r1"))

    with pytest.raises(EngineError, match=r"POST http://127\.0\.0\.1:\d+/generate: malformed response"):
        _run(go())


def test_client_stream_and_control_calls_turn_malformed_answers_into_engine_errors():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/generate":
            return httpx.Response(200, content=b'data: {"meta_info": 3}\n\ndata: [DONE]\n\n')
        return httpx.Response(200, content=b'["success"]')

    async def go(call):
        async with serve(handler) as url, EngineClient(url) as client:
            if call == "stream":
                return [chunk async for chunk in client.generate_stream(GenerateRequest(input_ids=[1]))]
            return await client.update_weight_version("3")

    with pytest.raises(EngineError, match=r"POST http://127\.0\.0\.1:\d+/generate: malformed response"):
        _run(go("stream"))
    with pytest.raises(EngineError, match=r"POST http://127\.0\.0\.1:\d+/update_weight_version: malformed response"):
        _run(go("control"))
