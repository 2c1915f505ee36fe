"""Protocol conformance of the native engine over real HTTP: shapes, streaming, abort, pause, control calls."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from slime_rl.engines.client import EngineClient, EngineError
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from slime_rl.orchestration.rollout_worker import engine_context_len
from tests.integration.conftest import toy_engine

PROMPT = [1, 6, 7, 77, 8, 85]


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory):
    # Configured above the toy model's 512 positions: the engine serves (and reports) 512.
    with toy_engine(tmp_path_factory, max_running_requests=4, max_context_len=1024) as url:
        yield url


def run(coro):
    return asyncio.run(coro)


def long_request(rid: str, n: int = 400) -> GenerateRequest:
    return GenerateRequest(input_ids=PROMPT, rid=rid, sampling_params=SamplingParams(max_new_tokens=n, ignore_eos=True))


async def wait_running(client: EngineClient, at_least: int) -> None:
    for _ in range(500):
        if (await client.get_loads()).num_running_reqs >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("requests never started running")


def test_generate_response_has_sglang_fields_and_types(engine_url):
    body = {"input_ids": PROMPT, "sampling_params": {"max_new_tokens": 5, "temperature": 0}, "return_logprob": True}
    out = httpx.post(f"{engine_url}/generate", json=body, timeout=60).json()
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert {"id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "weight_version"} <= set(meta)
    assert isinstance(meta["e2e_latency"], float) and meta["weight_version"] == "0"
    # SGLang's --enable-metrics timings, which the profiler's queueing and prefill attribution read
    assert 0 <= meta["queue_time"] <= meta["first_token_latency"] <= meta["e2e_latency"]
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    assert meta["prompt_tokens"] == len(PROMPT) and meta["completion_tokens"] == 5 == len(out["output_ids"])
    assert all(
        isinstance(lp, float) and t == tok and none is None
        for (lp, t, none), tok in zip(meta["output_token_logprobs"], out["output_ids"], strict=True)
    )
    assert isinstance(out["text"], str) and len(out["text"]) == 5


def test_generate_batch_and_text_inputs(engine_url):
    body = {"input_ids": [PROMPT, PROMPT[:3]], "rid": "b", "sampling_params": {"max_new_tokens": 2}}
    outs = httpx.post(f"{engine_url}/generate", json=body, timeout=60).json()
    assert [o["meta_info"]["id"] for o in outs] == ["b_0", "b_1"]
    assert [o["meta_info"]["prompt_tokens"] for o in outs] == [6, 3]
    out = httpx.post(f"{engine_url}/generate", json={"text": "12+3=", "sampling_params": {"max_new_tokens": 1}}).json()
    assert out["meta_info"]["prompt_tokens"] == 6  # <bos> + 5 characters


def test_generate_bad_input_is_http_400_with_message(engine_url):
    response = httpx.post(f"{engine_url}/generate", json={"input_ids": PROMPT, "text": "x"})
    assert response.status_code == 400 and "exactly one" in response.json()["error"]["message"]
    response = httpx.post(f"{engine_url}/generate", json={"input_ids": PROMPT, "sampling_params": {"top_p": 0}})
    assert response.status_code == 400 and "top_p" in response.json()["error"]["message"]


def test_duplicate_live_rid_is_rejected(engine_url):
    async def go():
        async with EngineClient(engine_url) as client:
            first = asyncio.create_task(client.generate(long_request("dup")))
            await wait_running(client, 1)
            with pytest.raises(EngineError, match="already running"):
                await client.generate(long_request("dup"))
            await client.abort_request("dup")
            return await first

    assert run(go()).finish_reason.type == "abort"


def test_stream_chunks_are_cumulative_and_end_with_finish(engine_url):
    async def go():
        async with EngineClient(engine_url) as client:
            request = GenerateRequest(
                input_ids=PROMPT, sampling_params=SamplingParams(max_new_tokens=6, ignore_eos=True)
            )
            return [chunk async for chunk in client.generate_stream(request)]

    chunks = run(go())
    assert [len(c.output_ids) for c in chunks] == [1, 2, 3, 4, 5, 6]
    assert all(c.output_ids[: i + 1] == chunks[-1].output_ids[: i + 1] for i, c in enumerate(chunks))
    assert [c.finish_reason is None for c in chunks] == [True] * 5 + [False]
    assert len(chunks[-1].output_logprobs) == 6


def test_abort_by_prefix_returns_partial_output_for_running_and_waiting(engine_url):
    async def go():
        async with EngineClient(engine_url) as client:
            group = uuid.uuid4().hex
            # 6 requests on 4 slots: 2 wait in the queue.
            tasks = [asyncio.create_task(client.generate(long_request(f"{group}-{i}"))) for i in range(6)]
            other = asyncio.create_task(client.generate(long_request("other", n=30)))
            await wait_running(client, 4)
            await client.abort_request(group)
            outs = await asyncio.gather(*tasks)
            return outs, await other, await client.get_loads()

    outs, other, load = run(go())
    assert all(o.finish_reason.type == "abort" for o in outs)
    assert any(o.completion_tokens > 0 for o in outs)  # running ones keep their partial tokens
    assert all(len(o.output_logprobs) == o.completion_tokens < 400 for o in outs)
    assert other.finish_reason.type == "length" and other.completion_tokens == 30
    assert load.num_reqs == 0


def test_abort_all_and_pause_modes(engine_url):
    async def go():
        async with EngineClient(engine_url) as client:
            greedy = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
            reference = await client.generate(GenerateRequest(input_ids=PROMPT, sampling_params=greedy))
            # retract: the request restarts from its tokens after continue and ends as if never paused.
            task = asyncio.create_task(client.generate(GenerateRequest(input_ids=PROMPT, sampling_params=greedy)))
            await wait_running(client, 1)
            await client.pause_generation("retract")
            paused_load = await client.get_loads()
            await client.continue_generation()
            retracted = await task
            # in_place: nothing runs while paused, new requests wait.
            await client.pause_generation("in_place")
            waiting = asyncio.create_task(client.generate(long_request("w", n=5)))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await client.continue_generation()
            resumed = await waiting
            # abort mode ends in-flight requests.
            task = asyncio.create_task(client.generate(long_request("pa")))
            await wait_running(client, 1)
            await client.pause_generation("abort")
            aborted = await task
            await client.continue_generation()
            task = asyncio.create_task(client.generate(long_request("aa")))
            await wait_running(client, 1)
            await client.abort_all()
            return reference, retracted, paused_load, resumed, aborted, await task

    reference, retracted, paused_load, resumed, aborted, all_aborted = run(go())
    assert paused_load.num_running_reqs == 0 and paused_load.num_waiting_reqs == 1
    assert retracted.output_ids == reference.output_ids
    assert resumed.finish_reason.type == "length"
    assert aborted.finish_reason.type == "abort" and all_aborted.finish_reason.type == "abort"


def test_control_endpoints_answer_sglang_shapes(engine_url):
    async def go():
        async with EngineClient(engine_url) as client:
            info = await client.get_model_info()
            server = await client.get_server_info()
            assert await client.health()
            assert await client.flush_cache()
            await client.update_weight_version("9")
            version = await client.get_weight_version()
            await client.update_weight_version("0")
            return info, server, version

    info, server, version = run(go())
    assert info.is_generation and info.model_path.endswith("model") and info.weight_version == "0"
    assert server["max_running_requests"] == 4 and "internal_states" in server
    assert version == "9"
    for path in ("/server_info", "/model_info", "/health_generate", "/get_load"):
        assert httpx.get(f"{engine_url}{path}").status_code == 200
    assert httpx.post(f"{engine_url}/pause_generation", json={"mode": "nap"}).status_code == 400


def test_weight_update_session_follows_sglang_rules_and_the_engine_is_one_rank(engine_url):
    async def go() -> list[str]:
        async with EngineClient(engine_url) as client:
            outcomes = []
            for call in (client.end_weight_update, client.begin_weight_update, client.begin_weight_update):
                try:
                    outcomes.append(await call())
                except EngineError as err:
                    outcomes.append(f"{err.status_code}: {err}")
            outcomes.append(await client.end_weight_update())
            return outcomes

    no_session, opened, twice, closed = run(go())
    assert no_session.startswith("400: ") and "No weight update session is open" in no_session
    assert opened == "Weight update session opened." and closed == "Weight update session closed."
    assert twice.startswith("400: ") and "already open" in twice
    assert httpx.post(f"{engine_url}/begin_weight_update", json={"selector": "both"}).status_code == 400
    assert httpx.get(f"{engine_url}/get_server_info").json()["tp_size"] == 1


def test_server_reports_the_model_position_limit_as_its_context(engine_url):
    server = httpx.get(f"{engine_url}/get_server_info").json()
    model = httpx.get(f"{engine_url}/get_model_info").json()
    assert server["max_context_len"] == 512 == model["max_context_len"]  # min(configured 1024, model's 512)


def test_request_over_the_context_is_http_400_with_sglang_messages(engine_url):
    def post(num_input: int, params: dict) -> httpx.Response:
        body = {"input_ids": [7] * num_input, "sampling_params": {"ignore_eos": True, **params}}
        return httpx.post(f"{engine_url}/generate", json=body, timeout=60)

    too_long = post(512, {"max_new_tokens": 1})
    over_total = post(500, {"max_new_tokens": 13})
    exact_fit = post(500, {"max_new_tokens": 12})
    no_budget = post(500, {})  # SGLang: no max_new_tokens given means whatever fits (default 128)

    assert too_long.status_code == 400
    assert too_long.json()["error"]["message"] == (
        "The input (512 tokens) is longer than the model's context length (512 tokens)."
    )
    assert over_total.status_code == 400
    assert over_total.json()["error"]["message"] == (
        "Requested token count exceeds the model's maximum context length of 512 tokens. You requested a total "
        "of 513 tokens: 500 tokens from the input messages and 13 tokens for the completion. Please reduce the "
        "number of tokens in the input messages or the completion to fit within the limit."
    )
    assert exact_fit.status_code == 200
    assert exact_fit.json()["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
    assert no_budget.status_code == 200 and no_budget.json()["meta_info"]["completion_tokens"] == 12


def test_batch_with_one_request_over_the_context_runs_none_of_it(engine_url):
    body = {"input_ids": [PROMPT, [7] * 510], "rid": "ctx", "sampling_params": {"max_new_tokens": 5}}
    response = httpx.post(f"{engine_url}/generate", json=body, timeout=60)
    assert response.status_code == 400 and "515 tokens" in response.json()["error"]["message"]
    assert httpx.get(f"{engine_url}/get_server_info").json()["internal_states"][0]["num_running_reqs"] == 0


def test_rollout_worker_reads_the_engine_context_even_inside_a_running_loop(engine_url):
    model_path = httpx.get(f"{engine_url}/get_model_info").json()["model_path"]

    async def like_a_ray_actor_init() -> int | None:  # Ray runs an async actor's __init__ inside its loop
        return engine_context_len([engine_url], model_path, timeout_s=30)

    assert run(like_a_ray_actor_init()) == 512
