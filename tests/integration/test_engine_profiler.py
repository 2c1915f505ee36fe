"""SGLang's `/start_profile` and `/stop_profile` on a native engine: Chrome traces, SGLang's answers, bad bodies,
and the all-engines helper through the router's worker list."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import httpx
import pytest

from slime_rl.engines.client import EngineClient, EngineError
from slime_rl.engines.profiler import (
    EngineProfileError,
    router_workers,
    start_engine_profilers,
    stop_engine_profilers,
)
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from slime_rl.engines.router import Router

from .conftest import toy_engine


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory):
    with toy_engine(tmp_path_factory, max_running_requests=2, max_context_len=64) as url:
        yield url


def read_trace(directory: Path) -> dict:
    [path] = directory.glob("*-TP-0.trace.json.gz")
    with gzip.open(path, "rt") as f:
        return json.load(f)


async def generate(client: EngineClient, new_tokens: int) -> None:
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    await client.generate(GenerateRequest(input_ids=[1, 2, 3], sampling_params=params))


def test_num_steps_profile_writes_a_chrome_trace_by_itself(engine_url: str, tmp_path: Path) -> None:
    async def run() -> None:
        async with EngineClient(engine_url) as client:
            answer = await client.start_profile(str(tmp_path), num_steps=2, activities=["CPU", "GPU"])
            assert answer == "Start profiling."
            await generate(client, 4)  # 4 steps: the profile ends after the second
            trace = read_trace(tmp_path)
            assert trace["traceEvents"] and all("ph" in event for event in trace["traceEvents"])
            assert any(event.get("cat") == "cpu_op" for event in trace["traceEvents"])
            with pytest.raises(EngineError, match="Profiling is not in progress") as err:
                await client.stop_profile()  # it already stopped, as in SGLang
            assert err.value.status_code == 500

    asyncio.run(run())


def test_profile_until_stop_and_a_second_start_is_refused(engine_url: str, tmp_path: Path) -> None:
    async def run() -> None:
        async with EngineClient(engine_url) as client:
            await client.start_profile(str(tmp_path), activities=["CPU"], with_stack=False, record_shapes=False)
            with pytest.raises(EngineError, match="Profiling is already in progress") as err:
                await client.start_profile(str(tmp_path))
            assert err.value.status_code == 500
            await generate(client, 2)
            assert not list(tmp_path.iterdir())
            assert await client.stop_profile() == "Stop profiling. This will take some time."
            assert read_trace(tmp_path)["traceEvents"]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"num_steps": "two"}, "num_steps must be an integer"),
        ({"num_steps": 0}, "num_steps must be >= 1"),
        ({"activities": ["MEM"]}, "activities must be a non-empty subset"),
        ({"start_step": 3}, "start_step is not supported"),
        ({"profile_by_stage": True}, "profile_by_stage=true is not supported"),
    ],
)
def test_bad_profile_body_is_a_400(engine_url: str, body: dict, message: str) -> None:
    response = httpx.post(f"{engine_url}/start_profile", json=body, timeout=30)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_all_engines_behind_the_router(engine_url: str, tmp_path: Path) -> None:
    router = Router(policy="round_robin")
    try:
        router.start([engine_url])

        async def run() -> None:
            urls = await router_workers(router.url)
            assert urls == [engine_url]
            started = await start_engine_profilers(urls, str(tmp_path), activities=["CPU"])
            assert started == {engine_url: "Start profiling."}
            async with EngineClient(engine_url) as client:
                await generate(client, 2)
            assert await stop_engine_profilers(urls) == {engine_url: "Stop profiling. This will take some time."}
            assert read_trace(tmp_path)["traceEvents"]
            with pytest.raises(EngineProfileError, match=f"stop_profile refused by 1 of 1 engines: {engine_url}"):
                await stop_engine_profilers(urls)

        asyncio.run(run())
    finally:
        router.stop()
